"""Reading resource files for CLI commands (``-`` is standard input)."""

from __future__ import annotations

import sys
from pathlib import Path

from aiplane.api import AnyResource, load_file, parse_yaml


def load_resources(files: list[Path]) -> list[AnyResource]:
    out: list[AnyResource] = []
    for path in files:
        if str(path) == "-":
            out.extend(parse_yaml(sys.stdin.read(), source="<stdin>"))
        else:
            out.extend(load_file(path))
    return out
