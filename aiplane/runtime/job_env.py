"""What a BatchJob shard is told, on both runtimes: one function, so both run the same shard.

Each runtime adds only what it alone knows: Kubernetes the completion index as
``AIPLANE_SHARD``, the Model's Service URL and PVC mount paths; the local runtime the
shard index, its gateway's URL and, for ``embed`` with a local ``embeddings`` Model,
nothing (the shard embeds in-process). The shard runner (``aiplane run-shard``,
:mod:`aiplane.batch`) reads nothing else.
"""

from __future__ import annotations

import json

from aiplane.api import BatchJob

#: The one shard entrypoint: Kubernetes pods run it from the aiplane image, local
#: processes as ``python -m aiplane run-shard``.
RUNNER_ARGV = ("aiplane", "run-shard")


def shard_env(job: BatchJob) -> dict[str, str]:
    """The environment of every shard of ``job`` (without ``AIPLANE_SHARD``)."""
    spec = job.spec
    env = {
        "AIPLANE_JOB": job.name,
        "AIPLANE_QUEUE": spec.queue,
        "AIPLANE_TASK": spec.task,
        "AIPLANE_SHARDS": str(spec.shards),
        "AIPLANE_INPUT": spec.input,
        "AIPLANE_OUTPUT": spec.output,
        "AIPLANE_ID_FIELD": spec.id_field,
    }
    if spec.text_field:
        env["AIPLANE_TEXT_FIELD"] = spec.text_field
    if spec.model:
        env["AIPLANE_MODEL"] = spec.model
    if spec.task == "generate":
        env |= {"AIPLANE_CONCURRENCY": str(spec.concurrency), "AIPLANE_MAX_TOKENS": str(spec.max_tokens)}
    if spec.task == "command":
        env["AIPLANE_COMMAND"] = json.dumps(spec.command)
    return env
