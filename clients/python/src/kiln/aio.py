"""`AsyncClient`: kiln's HTTP API on one pooled `httpx.AsyncClient`, with safe retries.

Every method is one of the API's uses (docs/api.md): jobs, live streams, suites. What they
share lives here once: where the server is and who the caller is (`KILN_URL`, `KILN_TOKEN`,
as the CLI reads them), error answers turned into exceptions by code (`errors`), and retries.

Retries: a request is tried again after a `429` or `503` (the server wrote nothing; its
`Retry-After` is honoured) and after a connection that failed before the request was sent. A
connection that drops after sending is retried only where a second try cannot do anything twice:
reads, and submits, which carry an `Idempotency-Key` the client generates once per call, so the
server answers a retry with the job or suite the first try created. The waits between tries grow
exponentially with jitter up to `max_backoff`, never shorter than `Retry-After`.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import aconnect_sse

from .content import wire
from .errors import (
    ConnectionFailed,
    KilnError,
    Overloaded,
    TooManyStreams,
    WaitTimeout,
    from_response,
)
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
    Output,
    OutputLost,
    Runtime,
    StreamMessage,
)
from .suite import Suite

__all__ = ["DEFAULT_URL", "AsyncClient"]

#: The server's own default address, used when neither `url=` nor `KILN_URL` says otherwise.
DEFAULT_URL = "http://127.0.0.1:8000"
#: The longest `?wait=` the server holds a request (`--max-wait-secs`' default).
MAX_WAIT_SECS = 60.0
#: Suites with more cases than this go as NDJSON lines unless the caller says otherwise.
NDJSON_ABOVE_CASES = 1000
#: The page size of case and group listings, the most the server gives.
PAGE = 1000
#: How many reads `wait_all` and the listings keep in flight at once.
CONCURRENT_READS = 16

T = TypeVar("T")
Body = Suite | Mapping[str, Any] | Callable[[], Iterable[bytes]]


class AsyncClient:
    """A client of one kiln server. Use it as `async with kiln.AsyncClient() as client:`.

    `url` and `token` default to `KILN_URL` and `KILN_TOKEN`; `timeout` (seconds) bounds each
    request's connect, read and write (a long poll's read gets its wait on top); `retries` is
    how many times a request is tried again, `backoff` the first wait, `max_backoff` the cap.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
        max_connections: int = 64,
    ) -> None:
        self.url = (url or os.environ.get("KILN_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("KILN_TOKEN")
        headers = {"User-Agent": "kiln-client-python"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    # Jobs.

    async def submit(
        self,
        job: JobSpec | Mapping[str, Any] | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> str:
        """Submits a job and returns its id once the server has it on disk.

        `job` is a `JobSpec` or a mapping of its fields; keywords add to it or override it:
        `await client.submit(runtime="python", code="print(1)", stdin="x")`. Content may be
        `bytes` (`stdin=b"\\x00\\xff"`), sent in base64. The server checks it
        (`kiln.InvalidRequest` names what is wrong). Retried safely under `idempotency_key`
        (one is generated when none is given).
        """
        body = _dump(job, fields)
        response = await self._request(
            "POST", "/v1/jobs", json=body, idempotency_key=idempotency_key or _new_key()
        )
        return str(response.json()["id"])

    async def get(self, job_id: str, *, wait: float | None = None) -> Job:
        """The job now, or once it ends if that is within `wait` seconds (at most 60)."""
        params = {"wait": _seconds(min(wait, MAX_WAIT_SECS))} if wait else None
        response = await self._request(
            "GET", f"/v1/jobs/{job_id}", params=params, timeout=self._long(wait)
        )
        return Job.model_validate_json(response.content)

    async def file(self, job_id: str, path: str) -> bytes:
        """A file the job kept from its run (one of its `files_out`), its exact bytes.

        Raises `kiln.FileNotFound` for a path the job did not keep.
        """
        response = await self._request("GET", f"/v1/jobs/{job_id}/files/{quote(path)}")
        return response.content

    async def download(self, job: str | Job, directory: str | Path) -> list[Path]:
        """Writes every file the job kept (`files_out`) under `directory` at its path, making
        directories as needed, and returns the paths written; those it left out are in its
        `files_omitted`. `job` is an ended job or its id (then read first).
        """
        if isinstance(job, str):
            job = await self.get(job)
        job_id = job.id
        # Every path is checked before anything is fetched or written.
        targets = [(kept.path, _inside(Path(directory), kept.path)) for kept in job.files_out or []]

        async def fetch(path: str, target: Path) -> Path:
            content = await self.file(job_id, path)
            await asyncio.to_thread(_write, target, content)
            return target

        return await _bounded([fetch(path, target) for path, target in targets])

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """The job once it ended, by long polls of up to 60 s each: one request a minute.

        Raises `kiln.WaitTimeout` if it has not ended after `timeout` seconds (None: no limit).
        """

        async def until_end() -> Job:
            while True:
                job = await self.get(job_id, wait=MAX_WAIT_SECS)
                if job.finished:
                    return job

        return await _within(until_end(), timeout, f"job {job_id}")

    async def result(
        self,
        job: JobSpec | Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Job:
        """Submits a job and waits for its end: `submit` then `wait`."""
        job_id = await self.submit(job, idempotency_key=idempotency_key, **fields)
        return await self.wait(job_id, timeout=timeout)

    async def cancel(self, job_id: str) -> Job:
        """Cancels a job: a queued one ends at once, a running one is killed.

        Raises `kiln.AlreadyFinished` if it had already ended.
        """
        response = await self._request("POST", f"/v1/jobs/{job_id}/cancel", idempotent=False)
        return Job.model_validate_json(response.content)

    async def events(self, job_id: str, *, after: int = 0) -> list[Event]:
        """The job's stored events after event id `after`, oldest first."""
        params = {"after": after} if after else None
        response = await self._request("GET", f"/v1/jobs/{job_id}/events", params=params)
        return [Event.model_validate(e) for e in response.json()["events"]]

    async def feed(self, **params: str | int) -> EventPage:
        """A page of the global event feed (a tenant sees its own events); `params` are its
        query parameters: `after=`, `limit=`, or `order="newest"` and `before=`."""
        response = await self._request("GET", "/v1/events", params=params)
        return EventPage.model_validate_json(response.content)

    async def jobs(self, **filters: str | int) -> JobPage:
        """A page of `GET /v1/jobs`; `filters` are its query parameters (`status=`,
        `runtime=`, `batch=`, `order="newest"`, `after=`, `before=`, `tenant=`, `limit=`)."""
        response = await self._request("GET", "/v1/jobs", params=filters)
        return JobPage.model_validate_json(response.content)

    async def batches(self, **filters: str | int) -> BatchPage:
        """A page of `GET /v1/batches`, newest first; `filters` are its query parameters
        (`order="oldest"`, `before=`, `after=`, `tenant=`, `limit=`)."""
        response = await self._request("GET", "/v1/batches", params=filters)
        return BatchPage.model_validate_json(response.content)

    def stream(self, job_id: str, *, after: int = 0) -> AsyncIterator[StreamMessage]:
        """The job's events and live output as they happen, until its end.

        Yields `Event`s (stored; history first), `Output` (what it writes, live) and
        `OutputLost`. A dropped connection, a restarted server or a stream the server ended
        for a slow reader is resumed after the last event seen (`Last-Event-ID`): no event
        is lost or comes twice.
        """
        return self._sse(f"/v1/jobs/{job_id}/events", after, lambda e: e.terminal)

    def stream_batch(self, batch_id: str, *, after: int = 0) -> AsyncIterator[StreamMessage]:
        """The batch's events and its cases', until `batch.completed`; resumed as `stream`."""
        return self._sse(
            f"/v1/batches/{batch_id}/events", after, lambda e: e.type == "batch.completed"
        )

    def stream_feed(self, *, after: int = 0) -> AsyncIterator[StreamMessage]:
        """Every event the caller may see, live and never ending; resumed as `stream`."""
        return self._sse("/v1/events", after, lambda e: False)

    async def wait_all(self, ids: Iterable[str], *, timeout: float | None = None) -> dict[str, Job]:
        """Every job of `ids` once it ended, by id.

        One request per job, one more per job still running, and one live stream, however
        long the jobs take: the newest event id is read first, then every job once; a job
        not yet ended ends after that event, so the global event feed is streamed from it
        until each such job's terminal event has passed, and those jobs are read again. If
        the server has no stream to spare, one long poll per job (a request a minute)
        replaces the feed. Raises `kiln.WaitTimeout` after `timeout` seconds.
        """
        return await _within(self._wait_all(list(dict.fromkeys(ids))), timeout, "the jobs")

    async def _wait_all(self, ids: list[str]) -> dict[str, Job]:
        newest = (await self.feed(order="newest", limit=1)).events
        tip = newest[0].id if newest else 0
        jobs = {job.id: job for job in await _bounded([self.get(job_id) for job_id in ids])}
        running = {job_id for job_id, job in jobs.items() if not job.finished}
        if running:
            waiting = set(running)
            try:
                async for message in self._sse(
                    "/v1/events", tip, lambda e: False, retry_refusal=False
                ):
                    if isinstance(message, Event) and message.terminal:
                        waiting.discard(message.job_id or "")
                        if not waiting:
                            break
            except TooManyStreams:
                await _bounded([self.wait(job_id) for job_id in waiting])
            for job in await _bounded([self.get(job_id) for job_id in running]):
                jobs[job.id] = job
        return {job_id: jobs[job_id] for job_id in ids}

    async def runtimes(self) -> list[Runtime]:
        """The runtimes this server offers."""
        response = await self._request("GET", "/v1/runtimes")
        return [Runtime.model_validate(r) for r in response.json()["runtimes"]]

    # Suites.

    async def submit_suite(
        self,
        suite: Body,
        *,
        ndjson: bool | None = None,
        idempotency_key: str | None = None,
    ) -> BatchSubmitted:
        """Submits a test suite: a `Suite`, a mapping (the JSON body), or a function returning
        its NDJSON lines (called again on a retry, so it can read a file of any size lazily).

        A `Suite` of more than 1,000 cases goes as NDJSON lines unless `ndjson=False`: the
        server then never holds the body whole, and neither does this client.
        """
        key = idempotency_key or _new_key()
        if callable(suite):
            lines: Callable[[], Iterable[bytes]] = suite
        elif isinstance(suite, Suite) and (
            ndjson or (ndjson is None and len(suite.cases) > NDJSON_ABOVE_CASES)
        ):
            lines = suite.ndjson
        else:
            body = suite.body() if isinstance(suite, Suite) else wire(dict(suite))
            response = await self._request("POST", "/v1/batches", json=body, idempotency_key=key)
            return BatchSubmitted.model_validate_json(response.content)
        response = await self._request(
            "POST",
            "/v1/batches",
            content=lambda: _aiter(lines()),
            headers={"Content-Type": "application/x-ndjson"},
            idempotency_key=key,
        )
        return BatchSubmitted.model_validate_json(response.content)

    async def batch(self, batch_id: str, *, wait: float | None = None) -> Batch:
        """The batch's progress and totals, now or once done if that is within `wait` s."""
        params = {"wait": _seconds(min(wait, MAX_WAIT_SECS))} if wait else None
        response = await self._request(
            "GET", f"/v1/batches/{batch_id}", params=params, timeout=self._long(wait)
        )
        return Batch.model_validate_json(response.content)

    async def cases(self, batch_id: str) -> list[Case]:
        """Every case of the batch in suite order, with its verdict once it ended."""
        pages = self._pages(f"/v1/batches/{batch_id}/cases", "cases")
        return [Case.model_validate(c) async for c in pages]

    async def groups(self, batch_id: str) -> list[Group]:
        """Every group of the batch in name order, with its pass@k."""
        pages = self._pages(f"/v1/batches/{batch_id}/groups", "groups")
        return [Group.model_validate(g) async for g in pages]

    async def cancel_batch(self, batch_id: str) -> Batch:
        """Cancels every case that has not ended; `kiln.AlreadyFinished` if it is done."""
        response = await self._request("POST", f"/v1/batches/{batch_id}/cancel", idempotent=False)
        return Batch.model_validate_json(response.content)

    async def follow(
        self, batch_id: str, *, timeout: float | None = None, progress: bool = False
    ) -> Batch:
        """The batch once every case ended, followed on its event stream.

        `progress=True` draws a tqdm bar (the `progress` extra) that moves as cases end. If
        the server has no stream to spare, long polls of the batch replace it.
        """
        return await _within(self._follow(batch_id, progress), timeout, f"batch {batch_id}")

    async def _follow(self, batch_id: str, progress: bool) -> Batch:
        batch = await self.batch(batch_id)
        if batch.done:
            return batch
        bar = _bar(batch.progress.total, progress)
        try:
            ended: set[str] = set()
            try:
                async for message in self._sse(
                    f"/v1/batches/{batch_id}/events",
                    0,
                    lambda e: e.type == "batch.completed",
                    retry_refusal=False,
                ):
                    if isinstance(message, Event) and message.terminal and message.job_id:
                        ended.add(message.job_id)
                        if bar is not None:
                            bar.update(len(ended) - bar.n)
            except TooManyStreams:
                while not (batch := await self.batch(batch_id, wait=MAX_WAIT_SECS)).done:
                    if bar is not None:
                        bar.update(batch.progress.done - bar.n)
            batch = await self.batch(batch_id)
            if bar is not None:
                bar.update(batch.progress.done - bar.n)
                bar.set_postfix(passed=batch.passed, failed=batch.failed)
            return batch
        finally:
            if bar is not None:
                bar.close()

    async def run_suite(
        self, suite: Body, *, timeout: float | None = None, progress: bool = False
    ) -> Batch:
        """Submits a suite and follows it to its end: `submit_suite` then `follow`."""
        submitted = await self.submit_suite(suite)
        return await self.follow(submitted.id, timeout=timeout, progress=progress)

    async def report_junit(self, batch_id: str, path: str | Path | None = None) -> str:
        """The batch's JUnit XML report; also written to `path` if given."""
        response = await self._request(
            "GET", f"/v1/batches/{batch_id}/report", params={"format": "junit"}
        )
        if path is not None:
            await asyncio.to_thread(Path(path).write_text, response.text, encoding="utf-8")
        return response.text

    # Transport.

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        json: Any = None,
        content: Callable[[], AsyncIterable[bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        idempotent: bool = True,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Sends a request, retrying as the module says; raises the error answer's exception."""
        headers = dict(headers or {})
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self._http.request(
                    method,
                    path,
                    params=params,
                    json=json,
                    content=content() if content else None,
                    headers=headers,
                    timeout=timeout if timeout is not None else self.timeout,
                )
            except httpx.TransportError as err:
                # A connect error never reached the server; anything later might have.
                unsent = isinstance(err, httpx.ConnectError | httpx.ConnectTimeout)
                if last or not (unsent or idempotent or idempotency_key):
                    raise ConnectionFailed(f"{method} {path}: {err!r}") from err
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.is_success:
                return response
            error = from_response(response)
            if last or not isinstance(error, Overloaded):
                raise error
            await asyncio.sleep(self._delay(attempt, error.retry_after))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.max_backoff, self.backoff * 2.0**attempt)
        return max(backoff * random.uniform(0.5, 1.0), retry_after or 0.0)

    def _long(self, wait: float | None) -> float:
        """A long poll's timeout: its wait on top of the usual."""
        return self.timeout + min(wait or 0.0, MAX_WAIT_SECS)

    async def _pages(self, path: str, key: str) -> AsyncIterator[Any]:
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": PAGE}
            if after is not None:
                params["after"] = after
            page = (await self._request("GET", path, params=params)).json()
            for item in page[key]:
                yield item
            after = page.get("next_after")
            if after is None:
                return

    async def _sse(
        self,
        path: str,
        after: int,
        ends: Callable[[Event], bool],
        *,
        retry_refusal: bool = True,
    ) -> AsyncIterator[StreamMessage]:
        """A live stream from event id `after`, resumed after drops until `ends` an event.

        `retry_refusal=False` raises `TooManyStreams` at once, for callers that have another
        way to wait.
        """
        last = after
        failures = 0
        while True:
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    path,
                    headers={"Last-Event-ID": str(last)},
                    # Keep-alives come every 15 s: a read that long means the stream is gone.
                    timeout=httpx.Timeout(self.timeout, read=max(self.timeout, 60.0)),
                ) as source:
                    response = source.response
                    if response.status_code == 204:
                        return
                    if not response.is_success:
                        await response.aread()
                        error = from_response(response)
                        refused = isinstance(error, TooManyStreams) and not retry_refusal
                        if refused or failures >= self.retries:
                            raise error
                        if not isinstance(error, Overloaded):
                            raise error
                        failures += 1
                        await asyncio.sleep(self._delay(failures, error.retry_after))
                        continue
                    async for sse in source.aiter_sse():
                        if not sse.data:
                            # A keep-alive: httpx-sse hands on the blank line after the comment
                            # as a message, where the SSE standard dispatches nothing.
                            continue
                        if sse.event == "output":
                            yield Output.model_validate_json(sse.data)
                        elif sse.event == "output.lost":
                            yield OutputLost.model_validate_json(sse.data)
                        elif sse.event == "dropped":
                            # Too slow a reader: the server says to resume after `last`.
                            break
                        elif sse.id:
                            event = Event.model_validate_json(sse.data)
                            last, failures = event.id, 0
                            yield event
                            if ends(event):
                                return
            except httpx.TransportError as err:
                if failures >= self.retries:
                    raise ConnectionFailed(f"GET {path}: {err!r}") from err
            # The stream ended early (a drop, a server stopping): resume after the last event.
            failures += 1
            await asyncio.sleep(self._delay(failures, None))


def _new_key() -> str:
    return f"kiln-py-{uuid.uuid4()}"


def _dump(value: JobSpec | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    base = value.model_dump(exclude_none=True) if isinstance(value, JobSpec) else dict(value or {})
    for name, field in fields.items():
        base[name] = field.model_dump(exclude_none=True) if hasattr(field, "model_dump") else field
    return dict(wire(base))


def _inside(root: Path, path: str) -> Path:
    """Where a kept file goes under `root`: the server checked the job's patterns, the client
    still writes nothing outside `root`."""
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise KilnError(f"the server listed a file path that leaves the directory: {path!r}")
    return root.joinpath(*parts)


def _write(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)


def _seconds(value: float) -> str:
    return f"{value:g}"


async def _aiter(lines: Iterable[bytes]) -> AsyncIterator[bytes]:
    for line in lines:
        yield line


async def _bounded(tasks: list[Awaitable[T]]) -> list[T]:
    """Runs `tasks` with at most `CONCURRENT_READS` at once; their results in order."""
    limit = asyncio.Semaphore(CONCURRENT_READS)

    async def one(task: Awaitable[T]) -> T:
        async with limit:
            return await task

    return list(await asyncio.gather(*(one(task) for task in tasks)))


async def _within(task: Awaitable[T], timeout: float | None, what: str) -> T:
    try:
        return await asyncio.wait_for(task, timeout)
    except asyncio.TimeoutError:
        raise WaitTimeout(f"{what} did not end within {timeout} s") from None


def _bar(total: int, wanted: bool) -> Any:
    if not wanted:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        raise KilnError(
            "progress=True draws a bar with tqdm: pip install 'kiln-client[progress]'"
        ) from None
    return tqdm(total=total, unit="case")
