"""A real llama-server behind a TCP proxy that can cut its streams: a fault injector for e2e tests.

Usage: ``cutting_proxy.py PORT MODEL_PATH ALIAS``. It starts llama-server on a free
loopback port and forwards ``PORT`` to it byte for byte. On SIGUSR1 it resets every
open connection (RST, as a crashed network path would) and then resets new ones for
``SICK_S`` seconds, so health checks fail too; after that it forwards again. The
engine itself never stops: this is a replica whose streams are cut, and which recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import subprocess
import sys
import time

from aiplane.engines.llamacpp import llama_server_binary
from aiplane.runtime.local.process import free_port

SICK_S = 6.0


class Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sick_until = 0.0
        self.open: set[asyncio.StreamWriter] = set()

    def cut(self) -> None:
        self.sick_until = time.monotonic() + SICK_S
        for writer in list(self.open):
            reset(writer)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.sick_until:
            reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            reset(writer)
            return
        self.open.update((writer, up_writer))
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self.open.discard(w)
                w.close()


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.write_eof()


async def main(port: int, model_path: str, alias: str) -> None:
    upstream = free_port()
    server = subprocess.Popen(
        [llama_server_binary(), "--model", model_path, "--alias", alias, "--host", "127.0.0.1",
         "--port", str(upstream), "--parallel", "4", "--ctx-size", "4096", "--metrics", "--no-webui"],
    )  # fmt: skip
    proxy = Proxy(upstream)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, proxy.cut)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    listener = await asyncio.start_server(proxy.handle, "127.0.0.1", port)
    try:
        async with listener:
            await stop.wait()
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
