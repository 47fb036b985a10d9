"""BatchJob shards: ``aiplane run-shard`` processes shard i of S of a dataset.

The same entrypoint runs in a Kubernetes pod (the Job's completion index is the shard)
and as a local process, configured only by ``AIPLANE_*`` variables
(:mod:`aiplane.batch.config`). Rows are numbered over the whole input and shard i takes
a contiguous range (:func:`shard_range`). Results are published atomically with a
manifest last, so a shard is done iff its manifest and the output it hashes exist:
re-runs skip done shards and redo the rest whole. :func:`scan` tells the plane how far
a job got from the manifests alone.

Modules: ``config`` (environment), ``shards`` (ranges, names), ``inputs`` and ``rows``
(reading and checking rows), ``storage`` and ``output`` (atomic files, manifest, scan),
``embed``, ``generate`` and ``command`` (the tasks), ``openai_client`` (HTTP with
retries), ``meter`` (progress), ``runner`` (one shard, start to end).
"""

from aiplane.batch.config import ShardConfig, load_config
from aiplane.batch.errors import BatchError, CommandFailed, ConfigError, InputError, ShardFailed
from aiplane.batch.output import OutputState, scan
from aiplane.batch.runner import ShardResult, run_env, run_shard
from aiplane.batch.shards import ShardNames, shard_range

__all__ = [
    "BatchError",
    "CommandFailed",
    "ConfigError",
    "InputError",
    "OutputState",
    "ShardConfig",
    "ShardFailed",
    "ShardNames",
    "ShardResult",
    "load_config",
    "run_env",
    "run_shard",
    "scan",
    "shard_range",
]
