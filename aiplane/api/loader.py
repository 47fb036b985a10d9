"""Parse multi-document YAML into resources, with errors a person can act on.

Every problem names the file, the document (``Kind/name``, or its position when it
has no name), the field path and what was expected, e.g.
``model.yaml: Model/smollm2: spec.replicas.min: must be >= 0 (got -1)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pydantic
import yaml

from aiplane.api.kinds import KINDS, AnyResource
from aiplane.api.meta import API_VERSION
from aiplane.errors import ValidationError

_PATTERN_HINTS = {
    "metadata.name": "a lowercase RFC 1123 name (a-z, 0-9, '-')",
    "apiVersion": f"{API_VERSION!r}",
}


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def _expected(err: Mapping[str, Any], path: str) -> str:
    """Turn one pydantic error into 'what was expected (got what)'."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = err.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {
            "greater_than_equal": (">=", "ge"),
            "greater_than": (">", "gt"),
            "less_than_equal": ("<=", "le"),
            "less_than": ("<", "lt"),
        }[kind]
        bound = ctx.get(op[1])
        return (
            f"must be {op[0]} {bound:g}{shown}"
            if isinstance(bound, int | float)
            else f"must be {op[0]} {bound}{shown}"
        )
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}{shown}"
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(path, f"a string matching {ctx.get('pattern')}")
        return f"must be {hint}{shown}"
    if kind in ("string_too_short", "too_short"):
        return f"must not be empty{shown}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg'][0].lower()}{err['msg'][1:]}{shown}"


def _label(doc: Mapping[str, Any], index: int) -> str:
    kind = doc.get("kind") or "?"
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return f"{kind}/{name}" if name else f"document {index + 1} ({kind})"


def parse_document(doc: Any, *, source: str = "<input>", index: int = 0) -> AnyResource:
    """Validate one decoded YAML/JSON document as a resource."""
    if not isinstance(doc, Mapping):
        raise ValidationError(
            [
                f"{source}: document {index + 1}: expected a mapping with apiVersion, kind, "
                f"metadata and spec (got {type(doc).__name__})"
            ]
        )
    label = _label(doc, index)
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ValidationError([f"{source}: {label}: kind: must be one of {sorted(KINDS)} (got {kind!r})"])
    try:
        return KINDS[kind].model_validate(doc)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = _path(err["loc"])
            problems.append(f"{source}: {label}: {path}: {_expected(err, path)}")
        raise ValidationError(problems) from exc


def parse_yaml(text: str, *, source: str = "<input>") -> list[AnyResource]:
    """Every resource in a multi-document YAML text; all problems reported together."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValidationError([f"{source}{where}: invalid YAML: {problem}"]) from exc
    if not docs:
        raise ValidationError([f"{source}: no resources found"])
    resources: list[AnyResource] = []
    problems: list[str] = []
    for index, doc in enumerate(docs):
        try:
            resources.append(parse_document(doc, source=source, index=index))
        except ValidationError as exc:
            problems.extend(exc.problems)
    seen: set[tuple[str, str]] = set()
    for res in resources:
        key = (res.kind, res.name)
        if key in seen:
            problems.append(f"{source}: {res.ref}: defined more than once")
        seen.add(key)
    if problems:
        raise ValidationError(problems)
    return resources


def load_file(path: str | Path) -> list[AnyResource]:
    """Resources from a YAML file; ``-`` is not handled here (the CLI reads stdin)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError([f"{p}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_yaml(text, source=str(p))
