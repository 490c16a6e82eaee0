"""Reading an upstream HTTP body within a size cap; parsing its JSON without stalling the loop."""

from __future__ import annotations

import asyncio
import json
import json.scanner
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Final

import httpx

# Sent on every KPS and IAM request: httpx would also offer br and zstd when those packages are
# installed, and this module decodes only what it can bound (zlib's max_length).
ACCEPT_ENCODING: Final = "gzip, deflate"

# Decompressed bytes produced per step, so a bomb is stopped within one step of the cap rather
# than after inflating a whole network chunk (64 KiB of gzip can hold 64 MB).
_STEP: Final = 64 * 1024

# Below this, the C parser runs on the loop: a page of 1,000 tasks is about 250 KB and parses in
# a few milliseconds. Above it, the pure-Python parser runs in a thread: the C parser holds the
# GIL from start to end (measured: 18 MB blocked the loop 210 ms even in a thread), the Python
# one lets the loop in every few milliseconds.
JSON_INLINE_LIMIT: Final = 1024 * 1024


class BodyTooLarge(Exception):
    """The body, decoded, is larger than the cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the answer is larger than {limit:,} bytes")


class BodyUndecodable(Exception):
    """The body's Content-Encoding is unknown or its compressed data is corrupt."""


class _Inflater:
    """One zlib stream; deflate without its zlib header is retried as raw deflate, as httpx does."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._raw_fallback = encoding == "deflate"
        wbits = zlib.MAX_WBITS | 16 if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._zlib = zlib.decompressobj(wbits)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Inflate `data` lazily, at most one step of output at a time."""
        while True:
            try:
                out = self._zlib.decompress(data, _STEP)
            except zlib.error:
                if self._raw_fallback and not self._started:
                    self._raw_fallback = False
                    self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise BodyUndecodable(f"the {self._encoding} data is corrupt") from None
            self._started = True
            yield out
            data = self._zlib.unconsumed_tail
            # A full step may leave output pending inside zlib even when no input is left.
            if not data and len(out) < _STEP:
                return

    def flush(self) -> bytes:
        """What zlib still holds once the input has ended."""
        try:
            return self._zlib.flush()
        except zlib.error:
            raise BodyUndecodable(f"the {self._encoding} data is corrupt") from None


def _inflaters(content_encoding: str) -> list[_Inflater]:
    names = [part.strip().lower() for part in content_encoding.split(",")]
    inflaters = []
    for name in names:
        if name in ("", "identity"):
            continue
        if name not in ("gzip", "x-gzip", "deflate"):
            raise BodyUndecodable(f"the body uses content encoding {name[:40]!r}")
        inflaters.append(_Inflater(name))
    # Encodings are listed in the order they were applied: undo the last first.
    return inflaters[::-1]


def _through(chunks: Iterable[bytes], inflater: _Inflater) -> Iterator[bytes]:
    for chunk in chunks:
        yield from inflater.feed(chunk)


def _decoded(raw: bytes, stages: list[_Inflater]) -> Iterator[bytes]:
    # Generators all the way: each step is counted before the next one is inflated.
    chunks: Iterator[bytes] = iter((raw,))
    for inflater in stages:
        chunks = _through(chunks, inflater)
    return chunks


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed response, decoded; `BodyTooLarge` as soon as it passes `limit`.

    Afterwards the response counts as read: `response.content` holds the same bytes.
    """
    if response.is_stream_consumed:
        # Already read in full by someone else (a mock transport does this): only check it.
        content = response.content
        if len(content) > limit:
            raise BodyTooLarge(limit)
        return content
    declared = response.headers.get("Content-Length", "")
    stages = _inflaters(response.headers.get("Content-Encoding", ""))
    if not stages and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)  # refused before a byte is read
    parts: list[bytes] = []
    size = 0

    def keep(chunks: Iterator[bytes]) -> None:
        nonlocal size
        for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            parts.append(chunk)

    async for raw in response.aiter_raw():
        keep(_decoded(raw, stages))
    for index, inflater in enumerate(stages):
        keep(_decoded(inflater.flush(), stages[index + 1 :]))
    content = b"".join(parts)
    # Leave the response as `aread()` would: httpx reads every response an auth flow saw once
    # more (aread is then a no-op), and `response.content` serves the error decoders.
    response._content = content
    return content


async def parse_json(body: bytes) -> Any:
    """`json.loads`, moved off the event loop when the body is large (see JSON_INLINE_LIMIT)."""
    if len(body) <= JSON_INLINE_LIMIT:
        return json.loads(body)
    return await asyncio.to_thread(_parse_slowly, body)


def _parse_slowly(body: bytes) -> Any:
    text = body.decode(json.detect_encoding(body))
    # A decoder of its own per call: the Python scanner keeps a memo that is not thread-safe.
    decoder = json.JSONDecoder()
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(text)
