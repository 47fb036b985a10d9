"""One stable 64-bit hash for every router: the same in every process and every run.

Python's ``hash()`` of a string changes per process (``PYTHONHASHSEED``), so a ring or a
"random" pick built on it would differ between the gateway, a restarted gateway and the
simulator. KubeAI hashes with xxHash64; aiplane has no xxhash dependency, so this is
BLAKE2b cut to 8 bytes: as uniform, a little slower (about a microsecond a call), and
in the standard library. Only the distribution matters here, not xxHash's exact values.
"""

from __future__ import annotations

import hashlib


def stable_hash(text: str) -> int:
    """An unsigned 64-bit hash of ``text``, stable across processes."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
