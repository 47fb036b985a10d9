"""fsspec URLs (``s3://``, ``gs://``, ``memory://``, ...) for input and output.

fsspec is imported only when a URL is used, and a missing backend (``s3fs`` for
``s3://``) is one line saying what to install.
"""

from __future__ import annotations

from typing import Any

from aiplane.batch.errors import InputError


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it; a missing backend says what to install."""
    try:
        import fsspec
    except ImportError as exc:
        raise InputError(f"{url}: URLs need fsspec (pip install 'aiplane[batch]')") from exc
    protocol = url.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise InputError(f"{url}: the {protocol}:// backend is not installed ({exc})") from exc
    except ValueError as exc:
        raise InputError(f"{url}: fsspec cannot open {protocol}:// URLs ({exc})") from exc
