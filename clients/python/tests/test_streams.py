"""Live streams: history, then live output, to the job's end; resumed across a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import kiln

from .conftest import Server


async def test_a_jobs_stream_carries_its_events_and_live_output_to_its_end(
    client: kiln.AsyncClient,
) -> None:
    # The last sleep keeps the job running while the stream connects, however busy the host:
    # a stream replays the current run's output from its start, not a finished run's.
    code = "for i in 1 2 3; do echo tick $i; sleep 0.2; done; sleep 1"
    job_id = await client.submit(runtime="sh", code=code)
    messages = [m async for m in client.stream(job_id)]
    events = [m for m in messages if isinstance(m, kiln.Event)]
    output = "".join(m.data for m in messages if isinstance(m, kiln.Output))
    assert events[0].type == "job.queued"
    assert events[-1].type == "job.succeeded" and messages[-1] == events[-1]
    assert output == "tick 1\ntick 2\ntick 3\n"


async def test_a_stream_resumed_after_its_last_event_ends_at_once(
    client: kiln.AsyncClient,
) -> None:
    job = await client.result(runtime="sh", code="true")
    events = await client.events(job.id)
    assert [m async for m in client.stream(job.id, after=events[-1].id)] == []
    replayed = [m async for m in client.stream(job.id, after=events[0].id)]
    assert [m.id for m in replayed if isinstance(m, kiln.Event)] == [e.id for e in events[1:]]


async def test_a_stream_resumes_across_a_server_restart_losing_and_repeating_nothing(
    start_server: Callable[..., Server],
) -> None:
    server = start_server("--workers", "1")
    async with kiln.AsyncClient(server.url) as client:
        job_id = await client.submit(runtime="sh", code="sleep 2; echo done", max_attempts=3)
        seen: list[kiln.Event] = []
        restarted = False
        async for message in client.stream(job_id):
            if not isinstance(message, kiln.Event):
                continue
            seen.append(message)
            if message.type == "job.started" and not restarted:
                # The server stops mid-run (the job goes back to the queue) and comes back on
                # the same database and port; the stream is resumed by its last event id.
                await asyncio.to_thread(server.stop)
                await asyncio.to_thread(server.start)
                restarted = True
        stored = await client.events(job_id)
    assert restarted
    assert [e.id for e in seen] == [e.id for e in stored]
    assert [e.type for e in seen].count("job.started") == 2
    assert seen[-1].type == "job.succeeded"


async def test_keep_alives_between_events_are_not_messages(
    start_server: Callable[..., Server],
) -> None:
    server = start_server("--sse-keepalive-ms", "50")
    async with kiln.AsyncClient(server.url) as client:
        job_id = await client.submit(runtime="sh", code="sleep 1; echo late")
        messages = [m async for m in client.stream(job_id)]
    assert [m.type for m in messages if isinstance(m, kiln.Event)] == [
        "job.queued",
        "job.started",
        "job.succeeded",
    ]
    assert [m.data for m in messages if isinstance(m, kiln.Output)] == ["late\n"]
