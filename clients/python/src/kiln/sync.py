"""`Client`: the same methods as `AsyncClient`, blocking, for scripts and notebooks.

The client is async first; this is its adapter. A `Client` owns an `AsyncClient` and an event
loop on a thread of its own, and runs each call there to its end, so both share one
implementation (retries, streams, waits) and a blocking caller never needs a loop of its own,
even where one already runs (a notebook). Streams become plain iterators, pulling one message
at a time from the loop. Interrupting a call (Ctrl-C) cancels it on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .aio import AsyncClient, Body
from .models import (
    Batch,
    BatchPage,
    BatchSubmitted,
    Case,
    Event,
    EventPage,
    Group,
    Job,
    JobPage,
    JobSpec,
    Runtime,
    StreamMessage,
)

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """A blocking client of one kiln server: `with kiln.Client() as client: ...`.

    Takes the same arguments as `AsyncClient`; its methods are `AsyncClient`'s, blocking.
    """

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kiln-client", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(url, token, **options)

        self.aio = self._run(make())
        self.url = self.aio.url

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection pool and stops the client's thread."""
        if self._loop.is_closed():
            return
        self._run(self.aio.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(call, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        async def pull() -> tuple[bool, T | None]:
            try:
                return True, await anext(stream)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._run(pull())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            closing = getattr(stream, "aclose", None)
            if closing is not None and not self._loop.is_closed():
                try:
                    self._run(closing())
                except (RuntimeError, concurrent.futures.CancelledError):
                    pass

    def submit(
        self,
        job: JobSpec | Mapping[str, Any] | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> str:
        return self._run(self.aio.submit(job, idempotency_key=idempotency_key, **fields))

    def get(self, job_id: str, *, wait: float | None = None) -> Job:
        return self._run(self.aio.get(job_id, wait=wait))

    def file(self, job_id: str, path: str) -> bytes:
        return self._run(self.aio.file(job_id, path))

    def download(self, job: str | Job, directory: str | Path) -> list[Path]:
        return self._run(self.aio.download(job, directory))

    def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        return self._run(self.aio.wait(job_id, timeout=timeout))

    def result(
        self,
        job: JobSpec | Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Job:
        return self._run(
            self.aio.result(job, timeout=timeout, idempotency_key=idempotency_key, **fields)
        )

    def cancel(self, job_id: str) -> Job:
        return self._run(self.aio.cancel(job_id))

    def events(self, job_id: str, *, after: int = 0) -> list[Event]:
        return self._run(self.aio.events(job_id, after=after))

    def feed(self, **params: str | int) -> EventPage:
        return self._run(self.aio.feed(**params))

    def jobs(self, **filters: str | int) -> JobPage:
        return self._run(self.aio.jobs(**filters))

    def batches(self, **filters: str | int) -> BatchPage:
        return self._run(self.aio.batches(**filters))

    def stream(self, job_id: str, *, after: int = 0) -> Iterator[StreamMessage]:
        return self._iterate(self.aio.stream(job_id, after=after))

    def stream_batch(self, batch_id: str, *, after: int = 0) -> Iterator[StreamMessage]:
        return self._iterate(self.aio.stream_batch(batch_id, after=after))

    def stream_feed(self, *, after: int = 0) -> Iterator[StreamMessage]:
        return self._iterate(self.aio.stream_feed(after=after))

    def wait_all(self, ids: Iterable[str], *, timeout: float | None = None) -> dict[str, Job]:
        return self._run(self.aio.wait_all(ids, timeout=timeout))

    def runtimes(self) -> list[Runtime]:
        return self._run(self.aio.runtimes())

    def submit_suite(
        self, suite: Body, *, ndjson: bool | None = None, idempotency_key: str | None = None
    ) -> BatchSubmitted:
        return self._run(
            self.aio.submit_suite(suite, ndjson=ndjson, idempotency_key=idempotency_key)
        )

    def batch(self, batch_id: str, *, wait: float | None = None) -> Batch:
        return self._run(self.aio.batch(batch_id, wait=wait))

    def cases(self, batch_id: str) -> list[Case]:
        return self._run(self.aio.cases(batch_id))

    def groups(self, batch_id: str) -> list[Group]:
        return self._run(self.aio.groups(batch_id))

    def cancel_batch(self, batch_id: str) -> Batch:
        return self._run(self.aio.cancel_batch(batch_id))

    def follow(
        self, batch_id: str, *, timeout: float | None = None, progress: bool = False
    ) -> Batch:
        return self._run(self.aio.follow(batch_id, timeout=timeout, progress=progress))

    def run_suite(
        self, suite: Body, *, timeout: float | None = None, progress: bool = False
    ) -> Batch:
        return self._run(self.aio.run_suite(suite, timeout=timeout, progress=progress))

    def report_junit(self, batch_id: str, path: str | Path | None = None) -> str:
        return self._run(self.aio.report_junit(batch_id, path))
