"""A tiny synchronous Kubernetes REST client for bootstrapping the dev cluster.

`cluster up` only needs readiness probes and a handful of node/namespace calls; stdlib
urllib with client certificates does that without pulling the async client (an optional
extra) into the CLI path.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from aiplane.dev.pki import Pki


@dataclass(frozen=True)
class Response:
    status: int  # 0 when the server could not be reached
    body: Any  # decoded JSON, or the raw text

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class KubeApi:
    """Admin-identity client for one apiserver; every call is bounded by `timeout`."""

    def __init__(self, server: str, pki: Pki, timeout: float = 5.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
        ctx.load_cert_chain(str(pki.admin_crt), str(pki.admin_key))
        self._ctx = ctx

    def request(self, method: str, path: str, body: Any = None, content_type: str = "") -> Response:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type or "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=self.timeout) as r:
                return Response(r.status, _decode(r.read()))
        except urllib.error.HTTPError as e:
            return Response(e.code, _decode(e.read()))
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            return Response(0, str(e))

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Response:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Response:
        return self.request("DELETE", path)


def _decode(raw: bytes) -> Any:
    text = raw.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
