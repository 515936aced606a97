"""A real S3-protocol server for the tests (moto's server mode, in a process of its own, on
a free port) and a TCP proxy in front of it that can refuse connections or cut a download
short, to play an unreachable store."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MotoServer:
    """``moto_server`` on 127.0.0.1: a fresh, empty store for as long as it runs."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):  # noqa: S310
                    return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def client(self, service: str = "s3", **credentials: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=credentials.get("key", "testing"),
            aws_secret_access_key=credentials.get("secret", "testing"),
            config=Config(s3={"addressing_style": "path"}),
        )

    def stop(self) -> None:
        self._process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=10)


class FaultProxy:
    """Forwards TCP connections to ``target_port``. ``refuse = True`` closes each new
    connection at once (the store is unreachable); ``cut_responses = n`` cuts the next ``n``
    responses longer than ``cut_after`` bytes after that many bytes (a download broken
    mid-file; listings are shorter and pass); ``delay`` slows every response down."""

    def __init__(self, target_port: int, *, cut_after: int = 4096) -> None:
        self.target_port = target_port
        self.refuse = False
        self.delay = 0.0  # seconds to wait before passing on each block of a response
        self.cut_responses = 0
        self.cut_after = cut_after
        self.cuts_made = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
        self._pipe(upstream, client, response=True)

    def _pipe(self, source: socket.socket, sink: socket.socket, response: bool = False) -> None:
        sent = 0
        cutting = False
        try:
            while data := source.recv(65536):
                if response and not cutting and sent + len(data) > self.cut_after:
                    with self._lock:
                        if self.cut_responses > 0:
                            self.cut_responses -= 1
                            self.cuts_made += 1
                            cutting = True
                if cutting:
                    sink.sendall(data[: max(self.cut_after - sent, 0)])
                    break
                if response and self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


@contextlib.contextmanager
def moto_running(env: dict[str, str] | None = None) -> Iterator[MotoServer]:
    server = MotoServer(env)
    try:
        yield server
    finally:
        server.stop()
