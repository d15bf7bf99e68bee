"""`kiln.Client`: the same methods as `AsyncClient`, blocking, configured as the CLI is."""

from __future__ import annotations

import inspect
import subprocess
from collections.abc import Callable

import pytest

import kiln

from .conftest import Server, kiln_bin


def public(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, inspect.isfunction) if name[0] != "_"}


def test_the_blocking_client_has_every_method_of_the_async_one() -> None:
    assert public(kiln.AsyncClient) - {"aclose"} == public(kiln.Client) - {"close"}


def test_blocking_result_stream_and_wait_all(server: Server) -> None:
    with kiln.Client(server.url) as client:
        job = client.result(runtime="python", code="print(6 * 7)")
        assert job.stdout == "42\n"
        # Output is streamed while the job runs (from its start, to whoever connects then), so
        # the job outlives the few milliseconds between the submit and the stream.
        job_id = client.submit(runtime="sh", code="echo live; sleep 1")
        messages = list(client.stream(job_id))
        assert any(isinstance(m, kiln.Output) and m.data == "live\n" for m in messages)
        last = messages[-1]
        assert isinstance(last, kiln.Event) and last.terminal
        assert client.wait_all([job.id, job_id])[job_id].status == "succeeded"
        with pytest.raises(kiln.JobNotFound):
            client.get("01a23858-defe-71f2-b842-9c94d4dc0c4a")


def test_leaving_a_stream_early_closes_it(server: Server) -> None:
    with kiln.Client(server.url) as client:
        job_id = client.submit(runtime="sh", code="sleep 1")
        for message in client.stream(job_id):
            assert isinstance(message, kiln.Event) and message.type == "job.queued"
            break
        assert client.wait(job_id, timeout=30).status == "succeeded"


def test_the_url_and_token_come_from_kiln_url_and_kiln_token(
    start_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    server = start_server()
    server.stop()
    made = subprocess.run(
        [kiln_bin(), "token", "create", "--db", str(server.db), "--tenant", "acme"],
        capture_output=True,
        text=True,
        check=True,
    )
    token = made.stdout.strip()
    server.start()
    monkeypatch.setenv("KILN_URL", server.url)
    monkeypatch.delenv("KILN_TOKEN", raising=False)
    with kiln.Client() as anonymous, pytest.raises(kiln.Unauthorized) as refused:
        anonymous.runtimes()
    assert refused.value.status == 401
    monkeypatch.setenv("KILN_TOKEN", token)
    with kiln.Client() as client:
        assert client.url == server.url
        assert client.result(runtime="sh", code="echo in").stdout == "in\n"
