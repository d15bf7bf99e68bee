"""The Python side of benches/pyclient.rs, run in the bench's own venv; one JSON line out.

pyclient.py submits URL --jobs N --tasks T --slices S
    N submits through kiln.AsyncClient and N through a bare httpx.AsyncClient posting the
    same body with the same headers (an Idempotency-Key per submit, as the client sends)
    over a pool of T keep-alive connections, each by T concurrent tasks, to the same
    server, in S slices that alternate between the two (the order swapped every slice), so
    that both meet the same load of a shared machine; after a warm-up of 2T submits each
    that opens the connections. Prints {"client": submits/s, "httpx": submits/s}.
pyclient.py evaluate URL PROBLEMS SAMPLES
    kiln.evaluate(PROBLEMS, SAMPLES, k=[1, 10]), timed from the call to its return (reading
    the files, the suite's submit and run, the cases read back, the results written).
    Prints {"seconds", "pass_at_k", "passed"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

import kiln

BODY = {"runtime": "sh", "code": "true"}


Submit = Callable[[], Awaitable[None]]


async def submits(url: str, jobs: int, tasks: int, slices: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks)
    async with (
        kiln.AsyncClient(url, max_connections=tasks) as client,
        httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http,
    ):

        async def with_client() -> None:
            await client.submit(BODY)

        async def with_httpx() -> None:
            response = await http.post(
                "/v1/jobs", json=BODY, headers={"Idempotency-Key": f"bench-{uuid.uuid4()}"}
            )
            if response.status_code != 202:
                raise SystemExit(f"POST /v1/jobs: {response.status_code} {response.text}")
            response.json()["id"]

        ways: dict[str, Submit] = {"client": with_client, "httpx": with_httpx}
        for submit in ways.values():
            await run(submit, 2 * tasks, tasks)
        seconds = dict.fromkeys(ways, 0.0)
        for index in range(slices):
            count = jobs // slices + (index < jobs % slices)
            for name in sorted(ways, reverse=index % 2 == 1):
                seconds[name] += await run(ways[name], count, tasks)
        return {name: jobs / took for name, took in seconds.items()}


async def run(submit: Submit, count: int, tasks: int) -> float:
    """Seconds for `count` submits by `tasks` tasks."""
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await submit()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submits")
    submit.add_argument("url")
    submit.add_argument("--jobs", type=int, required=True)
    submit.add_argument("--tasks", type=int, required=True)
    submit.add_argument("--slices", type=int, required=True)
    evaluate = commands.add_parser("evaluate")
    evaluate.add_argument("url")
    evaluate.add_argument("problems")
    evaluate.add_argument("samples")
    args = parser.parse_args()
    if args.command == "submits":
        rates = asyncio.run(submits(args.url, args.jobs, args.tasks, args.slices))
        print(json.dumps(rates))
        return
    start = time.perf_counter()
    scores = kiln.evaluate(args.problems, args.samples, k=[1, 10], url=args.url)
    seconds = time.perf_counter() - start
    results = Path(f"{args.samples}_results.jsonl").read_text().splitlines()
    passed = sum(json.loads(line)["passed"] for line in results)
    print(json.dumps({"seconds": seconds, "pass_at_k": scores, "passed": passed}))


if __name__ == "__main__":
    main()
