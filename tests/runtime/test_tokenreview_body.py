"""The TokenReview answer is read whole, however it arrives: a loaded API server sends it in
pieces, and one `StreamReader.read(n)` returns only what has come so far."""

from __future__ import annotations

import asyncio
import json
from unittest import mock

import aiohttp
import pytest

from coordinator.runtime.tokenreview import ReviewUnavailable, _read_bounded


def _stream(pieces: list[bytes]) -> aiohttp.StreamReader:
    protocol = mock.Mock(_reading_paused=False)
    stream = aiohttp.StreamReader(protocol, limit=2**16, loop=asyncio.get_running_loop())

    async def feed() -> None:
        for piece in pieces:
            await asyncio.sleep(0)  # arrives after the reader asked (it runs first)
            stream.feed_data(piece)
        stream.feed_eof()

    asyncio.get_running_loop().create_task(feed())
    return stream


def test_an_answer_in_pieces_is_read_whole() -> None:
    body = json.dumps({"status": {"authenticated": True, "user": {"username": "x" * 5000}}})
    raw = body.encode()
    pieces = [raw[i : i + 700] for i in range(0, len(raw), 700)]

    async def scenario() -> bytes:
        return await _read_bounded(_stream(pieces), 1 << 20)

    assert asyncio.run(scenario()) == raw


def test_an_answer_past_the_bound_is_refused() -> None:
    async def scenario() -> bytes:
        return await _read_bounded(_stream([b"x" * 600, b"y" * 600]), 1000)

    with pytest.raises(ReviewUnavailable, match="exceeds 1000 bytes"):
        asyncio.run(scenario())
