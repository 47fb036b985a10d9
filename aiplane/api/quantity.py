"""Durations ("60s", "5m") and Kubernetes quantities ("1Gi", "500m") as validated strings.

They stay strings in the resource (so the YAML round-trips and the CRD schema is a
plain pattern) and are parsed to numbers where a policy or runtime needs them.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"

_QUANTITY_SUFFIX = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
}
_QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$")


def _plain(value: int | float) -> str:
    """A number as the user wrote it: never in exponent form (2147483648, not 2.14748e+09)."""
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return format(value, "f").rstrip("0").rstrip(".")


def _number_to_seconds_text(value: Any) -> Any:
    """Accept a bare number of seconds in YAML (``60``) as ``"60s"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{_plain(value)}s"
    return value


def _number_to_text(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _plain(value)
    return value


Duration = Annotated[
    str,
    BeforeValidator(_number_to_seconds_text),
    Field(pattern=DURATION_PATTERN, examples=["60s", "5m", "1h30m"]),
]
Quantity = Annotated[
    str,
    BeforeValidator(_number_to_text),
    Field(pattern=QUANTITY_PATTERN, examples=["1Gi", "500m", "2"]),
]


def parse_duration(text: str) -> float:
    """Seconds in a duration string such as ``"1m30s"``."""
    if not _DURATION_RE.match(text):
        raise ValueError(f"not a duration: {text!r} (expected e.g. 60s, 5m, 1h)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def parse_quantity(text: str) -> float:
    """The number a Kubernetes quantity stands for: ``"1Gi"`` is 1073741824."""
    match = _QUANTITY_RE.match(text)
    if not match:
        raise ValueError(f"not a quantity: {text!r} (expected e.g. 1Gi, 500m, 2)")
    return float(match.group(1)) * _QUANTITY_SUFFIX[match.group(2) or ""]


def check_gpu_count(value: float) -> float:
    """GPUs may be a fraction of one (shared) or whole GPUs, never 1.5."""
    if value > 1 and not math.isclose(value, round(value)):
        raise ValueError(f"must be a whole number when above 1 (got {value:g})")
    return value
