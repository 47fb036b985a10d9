"""CRDs generated from the pydantic resources: structural, and as strict as the API.

The same CRDs were applied to a real kube-apiserver (v1.33) while writing this: it
accepted them, and rejected ``replicas.min: -1``, ``engine: foo``, ``gpus: -1``,
``gpus: 1.5`` and ``kubectl scale --replicas`` above ``max`` with messages naming the
field. These tests pin the schema properties that made that so.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from aiplane.api import GROUP, KINDS, VERSION
from aiplane.api.quantity import DURATION_PATTERN, QUANTITY_PATTERN
from aiplane.engines import default_registry
from aiplane.runtime.kubernetes.crds import CrdSchemaError, _structural, all_crds, crd


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.items():
            out.extend(_walk(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_walk(value, f"{path}[{i}]"))
    return out


def _schema(kind: str) -> dict[str, Any]:
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _spec(kind: str) -> dict[str, Any]:
    return _schema(kind)["properties"]["spec"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_schema_is_structural(kind: str) -> None:
    schema = _schema(kind)
    for path, node in _walk(schema):
        for banned in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "examples", "const"):
            assert banned not in node, f"{kind}{path} has {banned}"
        assert node.get("additionalProperties") is not False, f"{kind}{path}"
        assert node.get("default", "unset") is not None, f"{kind}{path}: default null"

    # every schema node under properties/items/additionalProperties names a type (or is int-or-string)
    def check(node: dict[str, Any], path: str) -> None:
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{kind}{path}: no type"
        for name, child in node.get("properties", {}).items():
            check(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            check(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            check(node["additionalProperties"], f"{path}.*")

    check(schema, "")
    assert schema["properties"]["metadata"] == {"type": "object"}
    assert schema["properties"]["status"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_crd_identity_and_names() -> None:
    crds = {c["spec"]["names"]["kind"]: c for c in all_crds()}
    assert set(crds) == set(KINDS)
    model = crds["Model"]
    assert model["apiVersion"] == "apiextensions.k8s.io/v1"
    assert model["kind"] == "CustomResourceDefinition"
    assert model["metadata"]["name"] == "models.aiplane.dev"
    assert model["spec"]["group"] == GROUP == "aiplane.dev"
    (version,) = model["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert model["spec"]["names"]["shortNames"] == ["mdl"]
    assert model["spec"]["names"]["categories"] == ["aiplane"]
    assert crds["TrainingJob"]["spec"]["names"]["shortNames"] == ["tj"]
    assert crds["BatchJob"]["spec"]["names"]["plural"] == "batchjobs"
    assert crds["Queue"]["spec"]["scope"] == "Cluster"
    assert {crds[k]["spec"]["scope"] for k in ("Model", "TrainingJob", "BatchJob")} == {"Namespaced"}


def test_validation_that_makes_the_server_reject_bad_models() -> None:
    spec = _spec("Model")
    engines = spec["properties"]["engine"]
    assert engines["type"] == "string"
    assert set(engines["enum"]) == set(default_registry().names())  # API and adapters agree
    assert spec["required"] == ["engine", "source"]
    replicas = spec["properties"]["replicas"]
    assert replicas["properties"]["min"] == {"type": "integer", "default": 1, "maximum": 1000, "minimum": 0}
    assert replicas["x-kubernetes-validations"] == [
        {"rule": "self.max >= self.min", "message": "max must be >= min"}
    ]
    assert replicas["default"] == {"min": 1, "max": 1}  # so .spec.replicas.min always exists for /scale
    gpus = spec["properties"]["resources"]["properties"]["gpus"]
    assert (gpus["type"], gpus["minimum"]) == ("number", 0)
    assert spec["properties"]["source"]["pattern"] == "^(pkg|file|hf|s3|gs|pvc)://.+$"
    target = spec["properties"]["autoscaling"]["properties"]["target"]
    assert (target["minimum"], target["exclusiveMinimum"]) == (0, True)


def test_nullable_optionals_and_int_or_string_quantities() -> None:
    resources = _spec("Model")["properties"]["resources"]["properties"]
    assert resources["gpuModel"] == {"type": "string", "nullable": True}
    memory = resources["memory"]
    assert memory == {"pattern": QUANTITY_PATTERN, "x-kubernetes-int-or-string": True, "nullable": True}
    cold = _spec("Model")["properties"]["timeouts"]["properties"]["coldStart"]
    assert cold["pattern"] == DURATION_PATTERN and cold["x-kubernetes-int-or-string"] is True
    assert cold["default"] == "120s"
    checkpoint = _spec("TrainingJob")["properties"]["checkpoint"]
    assert checkpoint["type"] == "object" and checkpoint["nullable"] is True
    assert checkpoint["required"] == ["path"] and "default" not in checkpoint


def test_maps_keep_their_value_schema() -> None:
    assert _spec("Model")["properties"]["env"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
    quota = _spec("Queue")["properties"]["quota"]
    assert quota["additionalProperties"] == {"type": "number", "minimum": 0}


def test_cross_field_rules_are_cel() -> None:
    batch = [r["rule"] for r in _spec("BatchJob")["x-kubernetes-validations"]]
    assert any("self.task in ['command', 'custom']" in r and "self.model" in r for r in batch)
    assert any("self.command" in r for r in batch)
    training = _spec("TrainingJob")["x-kubernetes-validations"]
    assert "gpusPerWorker" in training[0]["rule"]


def test_subresources_and_scale() -> None:
    for kind in KINDS:
        version = crd(kind)["spec"]["versions"][0]
        assert version["subresources"]["status"] == {}
        assert ("scale" in version["subresources"]) == (kind == "Model")
    scale = crd("Model")["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas.desired",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        ("Model", ["Ready", "Replicas", "Engine", "GPUs", "Age"]),
        ("TrainingJob", ["Status", "Workers", "Progress", "Queue", "Age", "Reason"]),
        ("BatchJob", ["Status", "Completed", "Rows", "Queue", "Age", "Reason"]),
        ("Queue", ["Cohort", "Used", "Borrowed", "Admitted", "Pending", "Age"]),
    ],
)
def test_printer_columns(kind: str, columns: list[str]) -> None:
    printed = crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in printed if not c.get("priority")] == columns
    by_name = {c["name"]: c for c in printed}
    assert by_name["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    if kind == "Model":
        assert by_name["Ready"]["jsonPath"] == ".status.ready"
        assert by_name["GPUs"] == {"name": "GPUs", "type": "number", "jsonPath": ".spec.resources.gpus"}


def test_unsupported_union_fails_here_not_on_the_server() -> None:
    class Odd(BaseModel):
        value: int | str

    with pytest.raises(CrdSchemaError, match="value"):
        _structural(Odd.model_json_schema(), {}, "spec")


def test_crds_round_trip_as_yaml() -> None:
    text = yaml.safe_dump_all(all_crds(), sort_keys=False)
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(text)] == [
        f"{KINDS[k].plural}.aiplane.dev" for k in KINDS
    ]
