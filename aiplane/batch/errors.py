"""What a shard run can fail with, each with the exit code ``aiplane run-shard`` returns.

::

    AiplaneError
    └── BatchError              exit_code says how the process ends
        ├── ConfigError    (2)  an AIPLANE_* variable is missing or wrong
        ├── InputError     (2)  the input cannot be read as rows (missing, unknown format)
        ├── ShardFailed    (1)  the shard could not finish (retries exhausted, server errors)
        └── CommandFailed  (n)  the ``command`` task's child exited with n

Exit code 2 means "fix the job, retrying will not help"; 1 and the child's code mean
"retry the shard" (Kubernetes does, per index). Messages are one user-facing line.
"""

from __future__ import annotations

from aiplane.errors import AiplaneError


class BatchError(AiplaneError):
    """Base of the shard runner's errors."""

    exit_code = 1


class ConfigError(BatchError):
    """The environment does not describe a runnable shard; the message names the variable."""

    exit_code = 2


class InputError(BatchError):
    """The input cannot be opened or read as rows; the message names the file."""

    exit_code = 2


class ShardFailed(BatchError):
    """The shard stopped before its end; nothing of it counts as done."""


class CommandFailed(BatchError):
    """The ``command`` task's process exited non-zero (or was killed by a signal)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code
