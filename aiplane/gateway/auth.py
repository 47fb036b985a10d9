"""Optional API keys: bearer tokens from ``AIPLANE_API_KEYS`` or a file, one per line."""

from __future__ import annotations

import hmac
import os
from pathlib import Path


def load_keys(path: str | None = None) -> frozenset[str]:
    keys: set[str] = set()
    env = os.environ.get("AIPLANE_API_KEYS", "")
    keys.update(k.strip() for k in env.split(",") if k.strip())
    file = path or os.environ.get("AIPLANE_API_KEY_FILE")
    if file:
        text = Path(file).expanduser().read_text(encoding="utf-8")
        keys.update(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return frozenset(keys)


def authorized(header: str | None, keys: frozenset[str]) -> bool:
    """Constant-time comparison against every key; no keys configured means open."""
    if not keys:
        return True
    if not header or not header.lower().startswith("bearer "):
        return False
    token = header[7:].strip()
    return any(hmac.compare_digest(token, key) for key in keys)
