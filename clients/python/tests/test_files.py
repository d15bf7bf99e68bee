"""Files a job produces: named by `outputs`, listed on the job, fetched and downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

import kiln

from .conftest import Server

#: Writes a binary file and a text file under out/, a symlink the server must not follow, and
#: a file no pattern names.
PRODUCER = """
mkdir -p out/deep
printf '\\000\\377png' > out/deep/image.bin
echo 42 > 'out/an answer #1.txt'
ln -s /etc/passwd out/link
echo no > elsewhere.txt
"""


async def produce(client: kiln.AsyncClient) -> kiln.Job:
    job = await client.result(runtime="sh", code=PRODUCER, outputs=["out/**"])
    assert job.status == "succeeded", job
    return job


async def test_a_job_lists_the_files_it_kept_and_those_it_left_out(
    client: kiln.AsyncClient,
) -> None:
    job = await produce(client)
    assert job.outputs == ["out/**"]
    assert job.files_out is not None and job.files_omitted is not None
    kept = {f.path: f for f in job.files_out}
    assert sorted(kept) == ["out/an answer #1.txt", "out/deep/image.bin"]
    assert kept["out/deep/image.bin"].size == 5
    assert kept["out/an answer #1.txt"].content_type.startswith("text/plain")
    assert [(f.path, f.reason) for f in job.files_omitted] == [("out/link", "not_a_regular_file")]


async def test_a_kept_file_is_fetched_as_its_exact_bytes(client: kiln.AsyncClient) -> None:
    job = await produce(client)
    assert await client.file(job.id, "out/deep/image.bin") == b"\x00\xffpng"
    # A name with a space and a `#` goes in the URL quoted, not cut at the `#`.
    assert await client.file(job.id, "out/an answer #1.txt") == b"42\n"


async def test_a_file_the_job_did_not_keep_raises_file_not_found(
    client: kiln.AsyncClient,
) -> None:
    job = await produce(client)
    for path in ("elsewhere.txt", "out/link", "out/missing"):
        with pytest.raises(kiln.FileNotFound) as missing:
            await client.file(job.id, path)
        assert isinstance(missing.value, kiln.NotFound)
        assert missing.value.status == 404


async def test_download_writes_every_kept_file_under_the_directory(
    client: kiln.AsyncClient, tmp_path: Path
) -> None:
    job = await produce(client)
    written = await client.download(job.id, tmp_path)
    assert sorted(written) == [
        tmp_path / "out" / "an answer #1.txt",
        tmp_path / "out" / "deep" / "image.bin",
    ]
    assert (tmp_path / "out/deep/image.bin").read_bytes() == b"\x00\xffpng"
    assert (tmp_path / "out/an answer #1.txt").read_bytes() == b"42\n"
    assert not (tmp_path / "out/link").exists()
    # The job itself works as well as its id, and a job that kept nothing writes nothing.
    assert len(await client.download(job, tmp_path / "again")) == 2
    plain = await client.result(runtime="sh", code="true")
    assert await client.download(plain, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_the_blocking_client_fetches_and_downloads_too(server: Server, tmp_path: Path) -> None:
    with kiln.Client(server.url) as client:
        job = client.result(
            runtime="python",
            code="open('result.bin', 'wb').write(bytes(range(256)))",
            outputs=["*.bin"],
        )
        assert client.file(job.id, "result.bin") == bytes(range(256))
        assert client.download(job.id, tmp_path) == [tmp_path / "result.bin"]
        assert (tmp_path / "result.bin").read_bytes() == bytes(range(256))
