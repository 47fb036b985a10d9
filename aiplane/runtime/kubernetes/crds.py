"""CustomResourceDefinitions generated from the pydantic resources (one source of truth).

The API server only takes *structural* schemas, so pydantic's JSON schema is rewritten:

* ``$ref``/``$defs`` are inlined; ``anyOf: [X, null]`` becomes ``X`` with ``nullable: true``;
  any other ``anyOf`` is an error here, not a CRD the server rejects later;
* ``title``/``examples`` go (noise in ``kubectl explain``); ``default: null`` goes;
  other defaults stay, and a nested object whose fields all have defaults gets
  its fields' defaults as its own, so the server fills in what pydantic would
  (``spec.replicas.min`` is then always present: the scale subresource needs it);
* ``additionalProperties: false`` goes (the server prunes unknown fields anyway);
  maps keep ``additionalProperties: <schema>``;
* JSON Schema's numeric ``exclusiveMinimum: 0`` becomes OpenAPI's ``minimum: 0`` +
  ``exclusiveMinimum: true``;
* quantities and durations become ``x-kubernetes-int-or-string`` with their pattern:
  pydantic accepts a bare number there (``memory: 1``, ``scaleToZeroAfter: 60``), so
  the server must too.

Patterns live in ``aiplane.api.quantity`` behind a ``BeforeValidator``, which makes
pydantic's default generator drop them; ``_Generator`` keeps them.

Cross-field rules that pydantic checks in validators are repeated as CEL
``x-kubernetes-validations`` (``_RULES``), so ``kubectl apply`` fails at once instead of
the operator reporting a bad spec later.

Status is written by the operator and kept open (``x-kubernetes-preserve-unknown-fields``);
the printer columns read these fields of it:

* Model: ``replicas`` (int), ``readyReplicas`` (int), ``ready`` ("2/3"), ``selector``
  (a label selector string, for ``/scale``);
* TrainingJob, BatchJob: ``phase``; BatchJob also ``completed`` ("3/8" shards); and
  ``admission``, which only the scheduler writes (``admitted``, ``reason``, ``flavor``,
  ``borrowed``, ``preempted``): the ``REASON`` column says why a job waits;
* Queue (written by the scheduler): ``used`` and ``borrowed`` ("H100 8/16"),
  ``admittedWorkloads``, ``pendingWorkloads`` and ``flavors`` (the numbers per key);
* all: ``conditions`` and ``observedGeneration`` per the API conventions.

The scale subresource of Model maps ``/scale`` ``spec.replicas`` to
``.spec.replicas.desired``: aiplane's autoscaler writes its decisions there, as do
``kubectl scale`` and the gateway scaling a Model up from zero, and the lowering reads
it (clamped to ``min``/``max``), so a resync never overwrites a decision and the
user's bounds are never touched.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from aiplane.api import GROUP, KINDS, VERSION
from aiplane.api.quantity import DURATION_PATTERN, QUANTITY_PATTERN

Schema = dict[str, Any]

_KEEP = frozenset(
    {
        "type",
        "description",
        "enum",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "required",
        "format",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
    }
)
_DROP = frozenset({"title", "examples"})
_INT_OR_STRING_PATTERNS = frozenset({QUANTITY_PATTERN, DURATION_PATTERN})
_GPU_WHOLE = "must be a whole number when above 1"

# (kind, path of keys inside the spec schema) -> extra schema keywords.
_RULES: dict[tuple[str, tuple[str, ...]], Schema] = {
    ("Model", ("properties", "replicas")): {
        "x-kubernetes-validations": [{"rule": "self.max >= self.min", "message": "max must be >= min"}]
    },
    ("Model", ("properties", "resources")): {
        "x-kubernetes-validations": [
            {
                "rule": "self.gpus <= 1.0 || self.gpus == double(int(self.gpus))",
                "message": f"gpus {_GPU_WHOLE}",
            }
        ]
    },
    ("TrainingJob", ()): {
        "x-kubernetes-validations": [
            {
                "rule": "self.gpusPerWorker <= 1.0 || self.gpusPerWorker == double(int(self.gpusPerWorker))",
                "message": f"gpusPerWorker {_GPU_WHOLE}",
            }
        ]
    },
    ("BatchJob", ()): {
        "x-kubernetes-validations": [
            {
                "rule": "self.task in ['command', 'custom'] || (has(self.model) && size(self.model) > 0)",
                "message": "task embed/generate needs spec.model (the Model to run)",
            },
            {
                "rule": "!(self.task in ['command', 'custom'])"
                " || (has(self.command) && size(self.command) > 0)",
                "message": "task 'command' needs spec.command (the argv each shard runs)",
            },
            {
                "rule": "self.gpusPerShard <= 1.0 || self.gpusPerShard == double(int(self.gpusPerShard))",
                "message": f"gpusPerShard {_GPU_WHOLE}",
            },
        ]
    },
    ("Queue", ("properties", "quota", "additionalProperties")): {"minimum": 0},
}


def _age() -> Schema:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


_COLUMNS: dict[str, list[Schema]] = {
    "Model": [
        {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
        {"name": "Engine", "type": "string", "jsonPath": ".spec.engine"},
        {"name": "GPUs", "type": "number", "jsonPath": ".spec.resources.gpus"},
        _age(),
        {"name": "Source", "type": "string", "jsonPath": ".spec.source", "priority": 1},
    ],
    "TrainingJob": [
        {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Workers", "type": "integer", "jsonPath": ".spec.workers"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progressSummary"},
        {"name": "Queue", "type": "string", "jsonPath": ".spec.queue"},
        _age(),
        {"name": "Reason", "type": "string", "jsonPath": ".status.admission.reason"},
        {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule", "priority": 1},
    ],
    "BatchJob": [
        {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Completed", "type": "string", "jsonPath": ".status.completed"},
        {"name": "Rows", "type": "integer", "jsonPath": ".status.rows"},
        {"name": "Queue", "type": "string", "jsonPath": ".spec.queue"},
        _age(),
        {"name": "Reason", "type": "string", "jsonPath": ".status.admission.reason"},
        {"name": "Task", "type": "string", "jsonPath": ".spec.task", "priority": 1},
    ],
    "Queue": [
        {"name": "Cohort", "type": "string", "jsonPath": ".spec.cohort"},
        {"name": "Used", "type": "string", "jsonPath": ".status.used"},
        {"name": "Borrowed", "type": "string", "jsonPath": ".status.borrowed"},
        {"name": "Admitted", "type": "integer", "jsonPath": ".status.admittedWorkloads"},
        {"name": "Pending", "type": "integer", "jsonPath": ".status.pendingWorkloads"},
        _age(),
        {"name": "Weight", "type": "number", "jsonPath": ".spec.weight", "priority": 1},
    ],
}

_DESCRIPTIONS = {
    "Model": "An inference service: one model server, N replicas, one name behind the gateway.",
    "TrainingJob": "Distributed PyTorch training, gang-scheduled through a Queue.",
    "BatchJob": "Offline embeddings or generation over a dataset, one shard per index.",
    "Queue": "A team's GPU quota, its cohort for borrowing, and its fair-share weight.",
}

_SCALE: dict[str, Schema] = {
    "Model": {
        "specReplicasPath": ".spec.replicas.desired",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
}


class CrdSchemaError(ValueError):
    """The pydantic schema uses something a structural CRD schema cannot express."""


class _Generator(GenerateJsonSchema):
    """Pydantic's generator, but a ``chain`` (BeforeValidator, then constraints) keeps its constraints.

    The default documents only the chain's first step, which is the bare ``str`` before
    the pattern is applied.
    """

    def chain_schema(self, schema: core_schema.ChainSchema) -> JsonSchemaValue:
        first = self.generate_inner(schema["steps"][0])
        last = self.generate_inner(schema["steps"][-1])
        if first.get("type") == last.get("type"):
            return {**last, **first}
        return first


def _structural(node: Schema, defs: dict[str, Schema], path: str) -> Schema:
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        node = {**defs[ref.rsplit("/", 1)[-1]], **node}
    any_of = node.pop("anyOf", None)
    nullable = False
    if any_of is not None:
        options = [o for o in any_of if o != {"type": "null"}]
        if len(options) != 1 or len(options) == len(any_of):
            raise CrdSchemaError(f"{path}: anyOf other than [X, null] is not structural: {any_of}")
        node = {**_structural(options[0], defs, path), **node}
        nullable = True
    out: Schema = {}
    for key, value in node.items():
        if key in _KEEP:
            out[key] = value
        elif key in _DROP:
            continue
        elif key == "default":
            if value is not None:
                out["default"] = value
        elif key == "nullable":
            nullable = nullable or bool(value)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            if isinstance(value, bool):
                out[key] = value
            else:
                out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                out[key] = True
        elif key == "properties":
            out["properties"] = {k: _structural(v, defs, f"{path}.{k}") for k, v in value.items()}
        elif key == "items":
            out["items"] = _structural(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out["additionalProperties"] = _structural(value, defs, f"{path}.*")
        else:
            raise CrdSchemaError(f"{path}: JSON schema keyword {key!r} has no structural CRD form")
    if out.get("type") == "string" and out.get("pattern") in _INT_OR_STRING_PATTERNS:
        del out["type"]
        out["x-kubernetes-int-or-string"] = True
    if nullable:
        out["nullable"] = True
    out = {k: out[k] for k in ("type", "description") if k in out} | out  # reads better in YAML
    for name, prop in out.get("properties", {}).items():
        if (
            prop.get("type") == "object"
            and "properties" in prop
            and not prop.get("required")
            and not prop.get("nullable")
            and "default" not in prop
            and name not in out.get("required", ())
        ):
            # Spelled out, not {}: the server checks a default against CEL rules as written.
            prop["default"] = {k: v["default"] for k, v in prop["properties"].items() if "default" in v}
    return out


def _overlay(schema: Schema, keys: tuple[str, ...], extra: Schema) -> None:
    node = schema
    for key in keys:
        node = node[key]  # KeyError: a rule names a field the API no longer has
    node.update(copy.deepcopy(extra))


def _json_schema(kind: str) -> Schema:
    """What ``aiplane.api.json_schema`` gives, plus the patterns it loses (see ``_Generator``)."""
    return KINDS[kind].model_json_schema(by_alias=True, mode="validation", schema_generator=_Generator)


def spec_schema(kind: str, full: Schema | None = None) -> Schema:
    """The structural schema of one kind's ``spec``, with its CEL rules."""
    full = full or _json_schema(kind)
    spec = _structural(full["properties"]["spec"], full.get("$defs", {}), "spec")
    for (rule_kind, keys), extra in _RULES.items():
        if rule_kind == kind:
            _overlay(spec, keys, extra)
    return spec


def crd(kind: str) -> Schema:
    """The ``apiextensions.k8s.io/v1`` CRD of one kind (``Model``, ``TrainingJob``...)."""
    cls = KINDS[kind]
    full = _json_schema(kind)
    schema: Schema = {
        "type": "object",
        "description": _DESCRIPTIONS.get(kind, kind),
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(kind, full),
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    if "spec" in full.get("required", ()):
        schema["required"] = ["spec"]
    subresources: Schema = {"status": {}}
    if kind in _SCALE:
        subresources["scale"] = dict(_SCALE[kind])
    names: Schema = {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": cls.plural,
        "singular": kind.lower(),
        "categories": ["aiplane"],
    }
    if cls.short_names:
        names["shortNames"] = list(cls.short_names)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{cls.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "aiplane", "app.kubernetes.io/managed-by": "aiplane"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced" if cls.namespaced else "Cluster",
            "names": names,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": [dict(c) for c in _COLUMNS[kind]],
                }
            ],
        },
    }


def all_crds() -> list[Schema]:
    return [crd(kind) for kind in KINDS]
