"""Suites built in Python: programs and groups per case, pass@k, NDJSON, following, JUnit."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import kiln

from .conftest import Server


def samples() -> kiln.Suite:
    """Three samples of two problems: `add` passes once of twice, `hello` once of once."""
    suite = kiln.Suite(runtime="python", pass_at_k=[1, 2])
    suite.add(group="add", name="right", code="assert 1 + 1 == 2")
    suite.add(group="add", name="wrong", code='assert 1 + 1 == 3, "expected 2"')
    suite.add(kiln.SuiteCase(group="hello", runtime="sh", code="echo hi", expected_output="hi"))
    return suite


async def test_a_suite_of_programs_per_case_reports_each_groups_pass_at_k(
    client: kiln.AsyncClient,
) -> None:
    batch = await client.run_suite(samples(), timeout=60)
    assert batch.done and (batch.passed, batch.failed) == (2, 1)
    assert batch.progress.total == 3
    assert batch.groups is not None
    assert batch.groups.pass_at_k == {"1": 0.75, "2": None}
    groups = {g.name: g for g in await client.groups(batch.id)}
    assert groups["add"].pass_at_k == {"1": 0.5, "2": 1.0}
    assert (groups["hello"].cases, groups["hello"].passed) == (1, 1)
    assert groups["hello"].pass_at_k == {"1": 1.0, "2": None}


async def test_cases_come_in_suite_order_with_their_verdicts(client: kiln.AsyncClient) -> None:
    batch = await client.run_suite(samples(), timeout=60)
    cases = await client.cases(batch.id)
    assert [(c.index, c.name, c.verdict) for c in cases] == [
        (0, "right", "passed"),
        (1, "wrong", "runtime_error"),
        (2, "case 3", "passed"),
    ]
    assert cases[1].detail is not None and "AssertionError: expected 2" in cases[1].detail
    job = await client.get(cases[1].job_id)
    assert (job.batch_id, job.verdict) == (batch.id, "runtime_error")


async def test_one_invalid_case_refuses_the_suite_naming_the_case(
    client: kiln.AsyncClient,
) -> None:
    suite = samples().add(name="bad", runtime="cobol", code="x")
    with pytest.raises(kiln.InvalidRequest) as refused:
        await client.submit_suite(suite)
    assert 'case 4 ("bad")' in refused.value.message


async def test_a_suite_over_the_request_limit_goes_whole_as_ndjson_lines(
    start_server: Callable[..., Server],
) -> None:
    server = start_server("--max-request-bytes", "8192")
    suite = kiln.Suite(runtime="sh", code="read a; echo $((a * 2))", compare="trim")
    for n in range(400):
        suite.add(name=f"double {n}", stdin=str(n), expected_output=str(2 * n))
    async with kiln.AsyncClient(server.url) as client:
        with pytest.raises(kiln.TooLarge):
            await client.submit_suite(suite, ndjson=False)
        submitted = await client.submit_suite(suite, ndjson=True)
        assert len(submitted.cases) == 400
        batch = await client.follow(submitted.id, timeout=120)
        assert (batch.passed, batch.failed) == (400, 0)


async def test_a_suite_can_come_as_lines_from_a_function(client: kiln.AsyncClient) -> None:
    def lines() -> Iterator[bytes]:
        cases = ({"stdin": str(n), "expected_output": str(n + 1)} for n in range(5))
        return kiln.ndjson_lines({"runtime": "sh", "code": "read a; echo $((a + 1))"}, cases)

    submitted = await client.submit_suite(lines)
    batch = await client.follow(submitted.id, timeout=60)
    assert batch.passed == 5


async def test_following_with_progress_draws_a_bar_to_the_last_case(
    client: kiln.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = await client.run_suite(samples(), timeout=60, progress=True)
    assert batch.done
    bar = capsys.readouterr().err
    assert "3/3" in bar and "passed=2" in bar and "failed=1" in bar


async def test_the_junit_report_has_a_testcase_per_case_and_a_failure_per_failed_one(
    client: kiln.AsyncClient, tmp_path: Path
) -> None:
    batch = await client.run_suite(samples(), timeout=60)
    path = tmp_path / "report.xml"
    xml = await client.report_junit(batch.id, path)
    assert path.read_text(encoding="utf-8") == xml
    root = ET.fromstring(xml)
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == ["right", "wrong", "case 3"]
    assert [c.get("name") for c in cases if c.find("failure") is not None] == ["wrong"]


async def test_cancelling_a_batch_ends_its_cases_and_a_second_cancel_is_refused(
    client: kiln.AsyncClient,
) -> None:
    suite = kiln.Suite(runtime="sh", code="sleep 30")
    for _ in range(3):
        suite.add()
    submitted = await client.submit_suite(suite)
    await client.cancel_batch(submitted.id)
    batch = await client.follow(submitted.id, timeout=30)
    assert batch.by_status["cancelled"] == 3
    with pytest.raises(kiln.AlreadyFinished):
        await client.cancel_batch(submitted.id)
