"""Jobs through `AsyncClient`: submit, read, wait, cancel, events, errors by code, wait_all."""

from __future__ import annotations

import time

import httpx
import pytest

import kiln


async def test_result_submits_the_job_and_returns_it_once_it_ended(
    client: kiln.AsyncClient,
) -> None:
    job = await client.result(runtime="python", code="print(input()[::-1])", stdin="kiln")
    assert isinstance(job, kiln.Job)
    assert (job.status, job.outcome, job.exit_code) == ("succeeded", "success", 0)
    assert job.stdout == "nlik\n"
    assert job.finished
    assert job.limits is not None and job.limits["wall_ms"] == 10_000


async def test_a_job_spec_takes_limits_args_and_files(client: kiln.AsyncClient) -> None:
    spec = kiln.JobSpec(
        runtime="bash",
        code='wc -l < data/input.txt; echo "$1"',
        args=["first-arg"],
        files={"data/input.txt": "a\nb\n"},
        limits=kiln.Limits(wall_ms=2000, memory_mb=256),
    )
    job = await client.result(spec, priority=5)
    assert job.stdout == "2\nfirst-arg\n"
    assert job.priority == 5
    assert job.limits is not None and job.limits["wall_ms"] == 2000


async def test_get_answers_at_once_and_wait_answers_at_the_end(client: kiln.AsyncClient) -> None:
    job_id = await client.submit(runtime="sh", code="sleep 1; echo done")
    assert (await client.get(job_id)).status in ("queued", "running")
    job = await client.wait(job_id, timeout=30)
    assert (job.status, job.stdout) == ("succeeded", "done\n")


async def test_a_wait_past_its_timeout_raises_and_the_job_runs_on(
    client: kiln.AsyncClient,
) -> None:
    job_id = await client.submit(runtime="sh", code="sleep 30")
    started = time.monotonic()
    with pytest.raises(kiln.WaitTimeout):
        await client.wait(job_id, timeout=0.5)
    assert time.monotonic() - started < 5
    assert not (await client.get(job_id)).finished
    cancelled = await client.cancel(job_id)
    assert cancelled.id == job_id
    assert (await client.wait(job_id, timeout=30)).status == "cancelled"


async def test_cancelling_a_finished_job_raises_already_finished(
    client: kiln.AsyncClient,
) -> None:
    job = await client.result(runtime="sh", code="true")
    with pytest.raises(kiln.AlreadyFinished) as refused:
        await client.cancel(job.id)
    assert refused.value.status == 409
    assert refused.value.code == "already_finished"
    assert isinstance(refused.value, kiln.Conflict)


async def test_an_unknown_job_raises_job_not_found(client: kiln.AsyncClient) -> None:
    with pytest.raises(kiln.JobNotFound) as missing:
        await client.get("01a23858-defe-71f2-b842-9c94d4dc0c4a")
    assert isinstance(missing.value, kiln.NotFound)
    assert missing.value.status == 404
    assert missing.value.message == "no job with this id"


async def test_an_unknown_runtime_raises_invalid_request_naming_it(
    client: kiln.AsyncClient,
) -> None:
    with pytest.raises(kiln.InvalidRequest) as refused:
        await client.submit(runtime="cobol", code="DISPLAY 'HI'.")
    assert refused.value.status == 422
    assert "cobol" in refused.value.message
    assert "GET /v1/runtimes" in refused.value.message


async def test_a_malformed_id_raises_bad_request(client: kiln.AsyncClient) -> None:
    with pytest.raises(kiln.BadRequest) as refused:
        await client.get("not-an-id")
    assert refused.value.status == 400


async def test_events_are_the_jobs_history_ending_in_its_terminal_event(
    client: kiln.AsyncClient,
) -> None:
    job = await client.result(runtime="sh", code="exit 3")
    assert job.status == "failed" and job.exit_code == 3
    events = await client.events(job.id)
    assert [e.type for e in events] == ["job.queued", "job.started", "job.failed"]
    assert all(isinstance(e, kiln.Event) and e.job_id == job.id for e in events)
    assert events[-1].terminal and events[-1].attempt == 1
    assert [e.id for e in await client.events(job.id, after=events[0].id)] == [
        e.id for e in events[1:]
    ]
    page = await client.feed(after=events[0].id - 1, limit=1)
    assert [e.id for e in page.events] == [events[0].id]
    assert page.next_after == events[0].id


async def test_jobs_pages_the_job_list(client: kiln.AsyncClient) -> None:
    await client.result(runtime="sh", code="true")
    await client.result(runtime="sh", code="true")
    first = await client.jobs(limit=1)
    assert len(first.jobs) == 1 and first.next_after == first.jobs[0].id
    second = await client.jobs(limit=1, after=first.next_after)
    assert second.jobs[0].id != first.jobs[0].id


async def test_runtimes_lists_what_the_server_offers(client: kiln.AsyncClient) -> None:
    runtimes = {r.name: r for r in await client.runtimes()}
    assert "python" in runtimes and "sh" in runtimes
    assert runtimes["python"].limits is not None


async def test_wait_all_costs_two_requests_a_running_job_however_long_they_run(
    client: kiln.AsyncClient,
) -> None:
    ids = [await client.submit(runtime="sh", code=f"sleep {1 + i % 3}") for i in range(8)]
    requests: list[str] = []

    async def count(request: httpx.Request) -> None:
        requests.append(f"{request.method} {request.url.path}")

    client._http.event_hooks["request"].append(count)
    started = time.monotonic()
    jobs = await client.wait_all(ids, timeout=60)
    took = time.monotonic() - started
    assert sorted(jobs) == sorted(ids)
    assert all(job.status == "succeeded" for job in jobs.values())
    # Polling each job once a second would have cost 8 requests a second.
    assert took > 2
    # The newest event id, each job once, the feed's stream, and each job again at its end.
    assert len(requests) <= 2 * len(ids) + 2, requests
    assert requests.count("GET /v1/events") == 2


async def test_wait_all_of_ended_jobs_needs_no_stream(client: kiln.AsyncClient) -> None:
    job = await client.result(runtime="sh", code="echo hi")
    requests: list[str] = []

    async def count(request: httpx.Request) -> None:
        requests.append(f"{request.method} {request.url.path}")

    client._http.event_hooks["request"].append(count)
    jobs = await client.wait_all([job.id, job.id])
    assert requests == ["GET /v1/events", f"GET /v1/jobs/{job.id}"]
    assert list(jobs) == [job.id]
    assert jobs[job.id].stdout == "hi\n"


async def test_batches_list_newest_first_and_jobs_filter_by_batch_and_order(
    client: kiln.AsyncClient,
) -> None:
    suite = kiln.Suite(runtime="sh", code="true").add().add()
    first = (await client.submit_suite(suite)).id
    second = (await client.submit_suite(suite)).id
    page = await client.batches(limit=1)
    assert [b.id for b in page.batches] == [second]
    assert page.next_before == second
    older = await client.batches(limit=1, before=page.next_before)
    assert [b.id for b in older.batches] == [first]
    cases = await client.jobs(batch=first)
    assert sorted(j.id for j in cases.jobs) == sorted(c.job_id for c in await client.cases(first))
    assert all(j.batch_id == first for j in cases.jobs)
    newest = await client.jobs(order="newest", limit=1)
    assert newest.next_before == newest.jobs[0].id
    with pytest.raises(kiln.BadRequest):
        await client.jobs(order="newest", after=newest.jobs[0].id)
