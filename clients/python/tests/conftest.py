"""Fixtures: the real kiln server, started from `KILN_BIN` on a free loopback port with a fresh
database, and a fault-injecting TCP relay in front of it for the retry tests.

`KILN_BIN` is the `kiln` binary cargo built; kiln's Rust test `tests/it/python_client.rs` sets
it and runs these tests. Nothing here stands in for the server: every test talks HTTP to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import kiln

_SERVERS = itertools.count()


def kiln_bin() -> str:
    path = os.environ.get("KILN_BIN")
    if not path:
        pytest.fail("set KILN_BIN to the kiln binary (cargo build), as tests/it/python_client.rs")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A running `kiln serve` on its own database in `dir`."""

    dir: Path
    args: tuple[str, ...]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.dir / "kiln.db"

    def start(self) -> Server:
        # Host uids apart from the Rust tests' servers (which start at 400,000 and stay below
        # 2.6e9), so that servers of both kinds can run at once.
        uid_base = 3_000_000_000 + (os.getpid() % 64) * 1_000_000 + next(_SERVERS) * 10_002
        log = (self.dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                kiln_bin(),
                "serve",
                "--db",
                str(self.db),
                "--work-root",
                str(self.dir / "work"),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--sandbox-uid-base",
                str(uid_base),
                "--node-id",
                "pytest",
                "--shutdown-grace-secs",
                "0",
                *self.args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("kiln listening on "):
            self.stop()
            log_text = (self.dir / "server.log").read_text(errors="replace")
            pytest.fail(f"kiln did not start: {line!r}\n{log_text}")
        return self

    def stop(self) -> None:
        """SIGTERM, as an operator stops it; SIGKILL if it takes more than 10 s."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


def server_dir() -> Path:
    """A directory of the server's own, which its jobs' uids may pass through (0711) to reach
    their work root inside it: pytest's own `pytest-of-root` (0700) would stop them."""
    path = Path(tempfile.mkdtemp(prefix="kiln-pytest-"))
    path.chmod(0o711)
    return path


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One server shared by the tests that need nothing special of it: four workers."""
    running = Server(server_dir(), ("--workers", "4")).start()
    yield running
    running.stop()
    shutil.rmtree(running.dir, ignore_errors=True)


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Starts a server of the test's own with `kiln serve` flags of its choosing."""
    started: list[Server] = []

    def start(*args: str) -> Server:
        running = Server(server_dir(), args)
        started.append(running.start())
        return running

    yield start
    for running in started:
        running.stop()
        shutil.rmtree(running.dir, ignore_errors=True)


@pytest.fixture
async def client(server: Server) -> AsyncIterator[kiln.AsyncClient]:
    async with kiln.AsyncClient(server.url) as fresh:
        yield fresh


class Relay:
    """A TCP relay to the server that can swallow answers: the first `drop` answers to
    `POST` requests reach the relay (so the server has done its work) and never the client,
    whose connection is cut instead, as a flaky network or proxy does."""

    def __init__(self, upstream_port: int, drop: int) -> None:
        self.upstream_port = upstream_port
        self.drop = drop
        self.posts = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        swallow = asyncio.Event()

        async def requests() -> None:
            while chunk := await reader.read(65536):
                posts = chunk.count(b"POST ")
                self.posts += posts
                if posts and self.drop > 0:
                    self.drop -= 1
                    swallow.set()
                up_writer.write(chunk)
                await up_writer.drain()

        async def answers() -> None:
            while chunk := await up_reader.read(65536):
                if swallow.is_set():
                    # The server answered, so it has done the work: cut the client off.
                    writer.transport.abort()
                    return
                writer.write(chunk)
                await writer.drain()

        with contextlib.suppress(ConnectionError, OSError):
            ask = asyncio.ensure_future(requests())
            await answers()
            ask.cancel()
        up_writer.close()
        writer.close()


@pytest.fixture
def relay() -> Callable[[Server, int], Relay]:
    def make(to: Server, drop: int = 0) -> Relay:
        return Relay(to.port, drop)

    return make
