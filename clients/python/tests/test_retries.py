"""Safe retries: a lost answer, a full queue or an overloaded server never doubles a job."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable

import pytest

import kiln

from .conftest import Relay, Server


async def test_a_submit_whose_answer_was_lost_is_retried_without_doubling_the_job(
    start_server: Callable[..., Server], relay: Callable[[Server, int], Relay]
) -> None:
    server = start_server()
    async with relay(server, 1) as flaky, kiln.AsyncClient(flaky.url) as client:
        job_id = await client.submit(runtime="sh", code="echo once")
        assert flaky.posts == 2
        jobs = (await client.jobs()).jobs
        assert [job.id for job in jobs] == [job_id]
        assert (await client.wait(job_id, timeout=30)).stdout == "once\n"


async def test_a_suite_whose_answer_was_lost_is_retried_without_doubling_it(
    start_server: Callable[..., Server], relay: Callable[[Server, int], Relay]
) -> None:
    server = start_server()
    suite = kiln.Suite(runtime="sh", code="true").add().add()
    async with relay(server, 1) as flaky, kiln.AsyncClient(flaky.url) as client:
        submitted = await client.submit_suite(suite)
        assert flaky.posts == 2
        assert len((await client.jobs()).jobs) == 2
        assert len(submitted.cases) == 2


async def test_without_a_key_a_lost_cancel_is_not_retried(
    start_server: Callable[..., Server], relay: Callable[[Server, int], Relay]
) -> None:
    server = start_server()
    async with kiln.AsyncClient(server.url) as direct:
        job_id = await direct.submit(runtime="sh", code="sleep 30")
    async with relay(server, 1) as flaky, kiln.AsyncClient(flaky.url) as client:
        with pytest.raises(kiln.ConnectionFailed):
            await client.cancel(job_id)
        assert flaky.posts == 1
        assert (await client.get(job_id)).status == "cancelled"


async def full_queue(client: kiln.AsyncClient) -> tuple[str, str]:
    """With one worker and room for one queued job: one running, one queued."""
    running = await client.submit(runtime="sh", code="sleep 30")
    for _ in range(500):
        if (await client.get(running)).status == "running":
            break
        await asyncio.sleep(0.02)
    queued = await client.submit(runtime="sh", code="sleep 30")
    return running, queued


async def test_a_full_queue_raises_queue_full_with_its_retry_after(
    start_server: Callable[..., Server],
) -> None:
    server = start_server("--workers", "1", "--max-queued-jobs", "1")
    async with kiln.AsyncClient(server.url, retries=0) as client:
        await full_queue(client)
        with pytest.raises(kiln.QueueFull) as refused:
            await client.submit(runtime="sh", code="true")
    assert refused.value.status == 429
    assert refused.value.retry_after == 2
    assert "queue is full" in refused.value.message
    assert isinstance(refused.value, kiln.Overloaded)


async def test_a_submit_to_a_full_queue_is_retried_after_retry_after_until_there_is_room(
    start_server: Callable[..., Server],
) -> None:
    server = start_server("--workers", "1", "--max-queued-jobs", "1")
    async with kiln.AsyncClient(server.url, max_backoff=1) as client:
        running, queued = await full_queue(client)

        async def make_room() -> None:
            await asyncio.sleep(1)
            await client.cancel(queued)

        started = time.monotonic()
        room = asyncio.ensure_future(make_room())
        job_id = await client.submit(runtime="sh", code="echo in")
        await room
        # Retry-After is 2 s: the first retry comes no sooner.
        assert time.monotonic() - started >= 2
        assert len((await client.jobs()).jobs) == 3
        await client.cancel(running)
        assert (await client.wait(job_id, timeout=30)).stdout == "in\n"


async def test_a_submit_while_the_database_is_locked_is_retried_until_the_lock_goes(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    async with kiln.AsyncClient(server.url, retries=0) as impatient:
        await impatient.result(runtime="sh", code="true")
        # An operator's sqlite3 takes the write lock: the server cannot write, and says so.
        operator = sqlite3.connect(server.db, isolation_level=None)
        operator.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(kiln.DatabaseUnavailable) as refused:
                await impatient.submit(runtime="sh", code="echo refused")
            assert (refused.value.status, refused.value.retry_after) == (503, 1)

            async def release() -> None:
                await asyncio.sleep(1.5)
                operator.execute("ROLLBACK")

            releasing = asyncio.ensure_future(release())
            async with kiln.AsyncClient(server.url, max_backoff=1) as client:
                job_id = await client.submit(runtime="sh", code="echo after")
                await releasing
                assert (await client.wait(job_id, timeout=30)).stdout == "after\n"
                assert len((await client.jobs()).jobs) == 2
        finally:
            operator.close()
