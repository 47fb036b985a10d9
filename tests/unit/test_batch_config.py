"""The shard's environment: defaults, and one line naming the variable for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiplane.batch.config import load_config, termination_log_path
from aiplane.batch.errors import ConfigError

BASE = {"AIPLANE_SHARD": "3", "AIPLANE_SHARDS": "8", "AIPLANE_TASK": "embed", "AIPLANE_INPUT": "in.jsonl"}
BASE |= {"AIPLANE_OUTPUT": "out"}


def test_defaults() -> None:
    config = load_config(BASE)
    assert (config.shard, config.shards, config.task, config.input, config.output) == (
        3,
        8,
        "embed",
        "in.jsonl",
        "out",
    )
    assert (config.text_field, config.id_field, config.batch_size, config.model_url) == (
        "text",
        "id",
        64,
        None,
    )
    assert (config.concurrency, config.max_tokens, config.temperature, config.retries) == (4, 128, 0.0, 8)


def test_generate_reads_its_knobs_and_custom_is_command() -> None:
    env = BASE | {
        "AIPLANE_TASK": "generate",
        "AIPLANE_MODEL": "m",
        "AIPLANE_MODEL_URL": "http://127.0.0.1:8000/v1/",
    }
    env |= {"AIPLANE_CONCURRENCY": "16", "AIPLANE_MAX_TOKENS": "32", "AIPLANE_TEMPERATURE": "0.7"}
    config = load_config(env)
    assert (config.model_url, config.text_field, config.concurrency) == (
        "http://127.0.0.1:8000/v1",
        "prompt",
        16,
    )
    assert (config.max_tokens, config.temperature) == (32, 0.7)
    custom = load_config(BASE | {"AIPLANE_TASK": "custom", "AIPLANE_COMMAND": '["python", "x.py"]'})
    assert (custom.task, custom.command) == ("command", ("python", "x.py"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"AIPLANE_INPUT": ""}, "AIPLANE_INPUT is not set: expected the input file or directory"),
        ({"AIPLANE_OUTPUT": None}, "AIPLANE_OUTPUT is not set"),
        ({"AIPLANE_SHARD": None}, "AIPLANE_SHARD is not set: expected the shard index, an integer in 0..7"),
        ({"AIPLANE_SHARD": "two"}, "AIPLANE_SHARD='two': expected the shard index, an integer in 0..7"),
        ({"AIPLANE_SHARD": "-1"}, "AIPLANE_SHARD='-1': expected the shard index"),
        ({"AIPLANE_SHARD": "8"}, "AIPLANE_SHARD=8: expected an index below AIPLANE_SHARDS=8 (0..7)"),
        ({"AIPLANE_SHARDS": "0"}, "AIPLANE_SHARDS='0': expected the number of shards, an integer >= 1"),
        ({"AIPLANE_TASK": "summarize"}, "AIPLANE_TASK='summarize': expected embed, generate or command"),
        ({"AIPLANE_TASK": None}, "AIPLANE_TASK is not set"),
        ({"AIPLANE_TASK": "generate"}, "AIPLANE_MODEL_URL is not set: generate needs"),
        (
            {"AIPLANE_MODEL_URL": "127.0.0.1:8000"},
            "AIPLANE_MODEL_URL='127.0.0.1:8000': expected an http(s) URL",
        ),
        ({"AIPLANE_MODEL_URL": "http://h/v1"}, "AIPLANE_MODEL is not set: expected the Model name"),
        ({"AIPLANE_BATCH_SIZE": "0"}, "AIPLANE_BATCH_SIZE='0': expected rows per model call"),
        ({"AIPLANE_TEMPERATURE": "hot"}, "AIPLANE_TEMPERATURE='hot': expected a sampling temperature"),
        ({"AIPLANE_TASK": "command"}, "AIPLANE_COMMAND is not set: expected a JSON list of strings"),
        (
            {"AIPLANE_TASK": "command", "AIPLANE_COMMAND": "python x.py"},
            "AIPLANE_COMMAND='python x.py': expected",
        ),
        ({"AIPLANE_TASK": "command", "AIPLANE_COMMAND": "[]"}, "AIPLANE_COMMAND='[]': expected a non-empty"),
    ],
)
def test_each_mistake_is_one_line_naming_the_variable(change: dict[str, str | None], message: str) -> None:
    env = {k: v for k, v in (BASE | change).items() if v is not None}
    with pytest.raises(ConfigError) as info:
        load_config(env)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_termination_log_path(tmp_path: Path) -> None:
    assert termination_log_path({"AIPLANE_TERMINATION_LOG": str(tmp_path / "t")}) == str(tmp_path / "t")
    assert termination_log_path({"AIPLANE_TERMINATION_LOG": ""}) is None
