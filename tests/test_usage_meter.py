"""The credential proxy's usage meter reads Anthropic usage from SSE and JSON."""

from __future__ import annotations

import json

from jupyter_sac.service.llm_proxy import UsageMeter
from sac_testing.fake_anthropic import sse


def _stream() -> bytes:
    return b"".join(
        [
            sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "usage": {
                            "input_tokens": 120,
                            "output_tokens": 1,
                            "cache_read_input_tokens": 30,
                            "cache_creation_input_tokens": 7,
                        }
                    },
                },
            ),
            sse("content_block_delta", {"type": "content_block_delta", "delta": {"text": "hi"}}),
            sse("message_delta", {"type": "message_delta", "usage": {"output_tokens": 42}}),
            sse("message_stop", {"type": "message_stop"}),
        ]
    )


def test_sse_usage_in_one_chunk() -> None:
    meter = UsageMeter(streaming=True)
    meter.feed(_stream())
    usage = meter.finish()
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (1, 120, 42)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (30, 7)


def test_sse_usage_split_at_every_byte_and_crlf() -> None:
    data = _stream().replace(b"\n", b"\r\n")
    meter = UsageMeter(streaming=True)
    for i in range(len(data)):
        meter.feed(data[i : i + 1])
    usage = meter.finish()
    assert (usage.input_tokens, usage.output_tokens) == (120, 42)


def test_json_usage() -> None:
    meter = UsageMeter(streaming=False)
    body = json.dumps({"usage": {"input_tokens": 5, "output_tokens": 9}}).encode()
    meter.feed(body[:10])
    meter.feed(body[10:])
    usage = meter.finish()
    assert (usage.input_tokens, usage.output_tokens) == (5, 9)


def test_garbage_is_ignored() -> None:
    meter = UsageMeter(streaming=True)
    meter.feed(b"data: {not json}\n\ndata: [1,2]\n\n: comment\n\n")
    assert meter.finish().output_tokens == 0
