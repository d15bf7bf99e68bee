"""Bytes: content given as `bytes` reaches the program exactly; output comes back exactly."""

from __future__ import annotations

import pytest

import kiln

#: Not UTF-8 (a lone 0xff, a NUL, a cut-off two-byte sequence), with a line break inside.
BINARY = b"\x00\xff\xfe kiln\n\xc3"


async def test_binary_stdin_comes_back_as_the_same_bytes_from_stdout(
    client: kiln.AsyncClient,
) -> None:
    job = await client.result(runtime="sh", code="cat", stdin=BINARY)
    assert job.status == "succeeded"
    assert job.stdout_encoding == "base64"
    assert job.stdout_bytes == BINARY


async def test_text_output_stays_text_and_its_bytes_are_its_utf8(
    client: kiln.AsyncClient,
) -> None:
    job = await client.result(runtime="python", code="print('héllo')", stdin=b"ignored")
    assert (job.stdout, job.stdout_encoding) == ("héllo\n", "utf-8")
    assert job.stdout_bytes == "héllo\n".encode()
    assert job.stderr_bytes == b""


async def test_non_utf8_output_on_both_streams_is_kept_exactly(
    client: kiln.AsyncClient,
) -> None:
    code = "import sys\nsys.stdout.buffer.write(b'\\xff\\x00ok')\nsys.stderr.buffer.write(b'\\xfe')"
    job = await client.result(runtime="python", code=code)
    assert (job.stdout_encoding, job.stderr_encoding) == ("base64", "base64")
    assert job.stdout_bytes == b"\xff\x00ok"
    assert job.stderr_bytes == b"\xfe"


async def test_code_and_files_given_as_bytes_reach_the_program_exactly(
    client: kiln.AsyncClient,
) -> None:
    spec = kiln.JobSpec(
        runtime="python",
        code=b"import sys\nsys.stdout.write(open('data.bin', 'rb').read().hex())\n",
        files={"data.bin": BINARY, "note.txt": "text beside bytes"},
    )
    job = await client.result(spec)
    assert job.stdout == BINARY.hex()


async def test_the_wire_form_of_a_value_is_passed_through_as_it_is(
    client: kiln.AsyncClient,
) -> None:
    job = await client.result({"runtime": "sh", "code": "od -An -tx1", "stdin": {"base64": "AP8K"}})
    assert job.stdout is not None and job.stdout.split() == ["00", "ff", "0a"]


async def test_bytes_in_an_unknown_encoding_form_are_refused_naming_the_field(
    client: kiln.AsyncClient,
) -> None:
    with pytest.raises(kiln.InvalidRequest) as refused:
        await client.submit(runtime="sh", code="cat", stdin={"hex": "00ff"})
    assert "stdin" in refused.value.message


async def test_live_output_pieces_give_their_exact_bytes(client: kiln.AsyncClient) -> None:
    # The job outlives the moment between the submit and the stream (the run's output so far
    # is replayed to whoever connects while it runs).
    code = "printf 'text\\n'; printf '\\377\\376'; sleep 1"
    job_id = await client.submit(runtime="sh", code=code)
    pieces = [m async for m in client.stream(job_id) if isinstance(m, kiln.Output)]
    assert b"".join(p.data_bytes for p in pieces) == b"text\n\xff\xfe"
    assert any(p.encoding == "base64" for p in pieces)
    assert all(p.encoding is None for p in pieces if p.data_bytes.isascii())


async def test_a_suite_compares_binary_expected_output_byte_by_byte(
    client: kiln.AsyncClient,
) -> None:
    suite = kiln.Suite(runtime="sh", code="cat", compare="exact")
    suite.add(name="same", stdin=BINARY, expected_output=BINARY)
    suite.add(name="one byte off", stdin=BINARY, expected_output=BINARY[:-1] + b"\xc4")
    suite.add(name="a file", code="cat in.bin", files={"in.bin": BINARY}, expected_output=BINARY)
    batch = await client.run_suite(suite, timeout=60)
    cases = await client.cases(batch.id)
    assert [(c.name, c.verdict) for c in cases] == [
        ("same", "passed"),
        ("one byte off", "wrong_answer"),
        ("a file", "passed"),
    ]


async def test_a_suite_sent_as_ndjson_lines_carries_bytes_too(client: kiln.AsyncClient) -> None:
    cases = ({"stdin": bytes([n, 0xFF]), "expected_output": bytes([n, 0xFF])} for n in range(3))
    lines = kiln.ndjson_lines({"runtime": "sh", "code": "cat", "compare": "exact"}, cases)
    submitted = await client.submit_suite(lambda: lines)
    batch = await client.follow(submitted.id, timeout=60)
    assert (batch.passed, batch.failed) == (3, 0)
