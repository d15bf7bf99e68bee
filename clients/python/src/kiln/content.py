"""Bytes and text on the wire: how the client sends content and reads back output.

The server takes every content value (a job's code, stdin and files; a suite's and a case's
code, files, stdin and expected output) as a JSON string of UTF-8 text or as `{"base64": ...}`
of any bytes (docs/jobs.md, "Bytes and text"). Callers give `str` for text and `bytes` for
bytes: `wire` turns every `bytes` in a request body into `{"base64": ...}`, always, whether or
not the bytes happen to be UTF-8, so that what the program receives is exactly what was given
and never depends on a guess. What comes back (a job's stdout and stderr, a live output piece)
carries its encoding beside it; `decoded` gives the exact bytes either way.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

#: A content value as a request takes it: text, bytes, or the wire form `{"base64": "..."}`.
Content = str | bytes | Mapping[str, str]
#: How the server wrote a stream: the text itself, or its bytes in base64.
Encoding = Literal["utf-8", "base64"]


def wire(value: Any) -> Any:
    """`value` with every `bytes` in it, at any depth, as `{"base64": ...}`: a body JSON takes.

    Only content values may be bytes; bytes anywhere else reach the server as that form too,
    and its 422 names the field.
    """
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        if not any(isinstance(v, bytes | dict | list) for v in value.values()):
            return value
        return {key: wire(v) for key, v in value.items()}
    if isinstance(value, list):
        return [wire(v) for v in value]
    return value


def decoded(data: str | None, encoding: str | None) -> bytes | None:
    """The exact bytes of a stream the server sent as `data` in `encoding` (text when absent)."""
    if data is None:
        return None
    if encoding == "base64":
        return base64.b64decode(data)
    return data.encode("utf-8")
