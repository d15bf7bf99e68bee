"""Building a test suite in Python: the body of `POST /v1/batches` (docs/suites.md).

A suite is defaults (runtime, code, files, limits, compare) and cases, each of which may give
its own program and a group (the problem it is a sample of), with `pass_at_k` asked for the
groups. The same suite can be sent whole, as one JSON body, or as NDJSON lines (the suite's own
fields, then a case a line), which is how suites larger than a request body go: `ndjson()`
yields the lines one by one, so a suite built lazily is never held whole as bytes. Content
(code, files, stdin, expected output) is text or bytes, as in a job (`kiln.content`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .content import Content, wire
from .models import Limits

Compare = Literal["trim", "exact", "tokens"]


class SuiteCase(BaseModel):
    """One case: its input and expected output, and optionally its own program and group.
    `code`, `stdin`, `expected_output` and each of `files` is text or bytes."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    group: str | None = None
    runtime: str | None = None
    code: Content | None = None
    files: dict[str, Content] | None = None
    stdin: Content | None = None
    args: list[str] | None = None
    expected_output: Content | None = None
    limits: Limits | None = None


class Suite(BaseModel):
    """A suite: `Suite(runtime="python", code=..., pass_at_k=[1, 10]).add(stdin=..., ...)`."""

    model_config = ConfigDict(extra="allow")

    runtime: str | None = None
    code: Content | None = None
    files: dict[str, Content] | None = None
    limits: Limits | None = None
    compare: Compare | None = None
    pass_at_k: list[int] | None = None
    callback_url: str | None = None
    callback_each_case: bool | None = None
    cases: list[SuiteCase] = []

    def add(self, case: SuiteCase | Mapping[str, Any] | None = None, **fields: Any) -> Suite:
        """Adds a case (a `SuiteCase`, a mapping, or its fields as keywords); returns the suite."""
        merged = {**_as_dict(case), **fields}
        self.cases.append(SuiteCase.model_validate(merged))
        return self

    def header(self) -> dict[str, Any]:
        """The suite's own fields: every field of the body but `cases`."""
        return dict(wire(self.model_dump(exclude_none=True, exclude={"cases"})))

    def body(self) -> dict[str, Any]:
        """The whole suite as one JSON body."""
        return dict(wire(self.model_dump(exclude_none=True)))

    def ndjson(self) -> Iterator[bytes]:
        """The suite as NDJSON lines: its own fields first, then a case a line."""
        return ndjson_lines(self.header(), self.cases)


def ndjson_lines(
    header: Mapping[str, Any], cases: Iterable[SuiteCase | Mapping[str, Any]]
) -> Iterator[bytes]:
    """NDJSON lines of a suite whose cases come from any iterable (a generator, for huge ones)."""
    yield _line(header)
    for case in cases:
        yield _line(
            case.model_dump(exclude_none=True) if isinstance(case, SuiteCase) else dict(case)
        )


def _line(value: Mapping[str, Any]) -> bytes:
    return json.dumps(wire(dict(value)), separators=(",", ":")).encode() + b"\n"


def _as_dict(value: BaseModel | Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    return dict(value)
