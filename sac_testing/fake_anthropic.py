"""A scripted fake of the Anthropic Messages API (the model edge of the machine).

Speaks the real wire protocol: ``POST /v1/messages`` answered as server-sent
events when ``"stream": true`` (message_start, content_block_*, message_delta,
message_stop) or as one JSON message otherwise. It records every request
(headers and body) for tests to inspect at ``GET /_fake/requests`` and accepts
the next answers at ``POST /_fake/script`` ``{"replies": [...]}``; when the
script is empty it answers "ok".

A reply is a string (a text answer) or an object:
``{"text": "...", "tool_use": {"name": "Bash", "input": {...}}, "delay": 0.2}``
(text and/or one tool call; ``delay`` seconds between streamed pieces, for
turns that must stay running while a test cancels them), or a provider's error:
``{"status": 529, "error": {"type": "overloaded_error", "message": "..."}}``. Only agent-loop
requests (those offering ``tools``) consume the script, so the CLI's side
requests (titles, summaries) never eat a test's scripted answer.

Run: ``python -m sac_testing.fake_anthropic --port 9999``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tornado import web

INPUT_TOKENS = 17
CACHE_READ_TOKENS = 3


class State:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[str | dict[str, Any]] = []

    def next_reply(self, body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("tools") or not self.script:
            return {"text": "ok"}
        reply = self.script.pop(0)
        return {"text": reply} if isinstance(reply, str) else dict(reply)


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def json_object_or_refuse(handler: web.RequestHandler) -> dict[str, Any] | None:
    """The request's JSON object, or None after answering 400 as the Messages API
    does for a body that is not one (the credential proxy passes bodies on unread,
    and its fuzzing sends such bodies)."""
    try:
        body = json.loads(handler.request.body)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    handler.set_status(400)
    error = {"type": "invalid_request_error", "message": "not a JSON object"}
    handler.finish({"type": "error", "error": error})
    return None


class MessagesHandler(web.RequestHandler):
    @property
    def state(self) -> State:
        return self.settings["state"]

    async def post(self) -> None:
        body = json_object_or_refuse(self)
        if body is None:
            return
        self.state.requests.append(
            {
                "path": self.request.path,
                "query": self.request.query,
                "headers": dict(self.request.headers),
                "body": body,
            }
        )
        reply = self.state.next_reply(body)
        if "status" in reply:
            # A provider's error, as the Messages API answers one.
            self.set_status(int(reply["status"]))
            self.finish({"type": "error", "error": reply.get("error", {})})
            return
        text: str = reply.get("text") or ""
        tool = reply.get("tool_use")
        delay = float(reply.get("delay") or 0)
        model = body.get("model", "claude-test")
        output_tokens = max(1, len(text.split()))
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        stop_reason = "tool_use" if tool else "end_turn"
        blocks: list[dict[str, Any]] = []
        if text or not tool:
            blocks.append({"type": "text", "text": text or "ok"})
        if tool:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": tool["name"],
                    "input": tool.get("input", {}),
                }
            )
        usage = {
            "input_tokens": INPUT_TOKENS,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": CACHE_READ_TOKENS,
        }
        if not body.get("stream"):
            self.finish(
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": {**usage, "output_tokens": output_tokens},
                }
            )
            return
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        events = [
            sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": usage,
                    },
                },
            ),
            sse("ping", {"type": "ping"}),
        ]
        for index, block in enumerate(blocks):
            events += _block_events(index, block)
        events += [
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            ),
            sse("message_stop", {"type": "message_stop"}),
        ]
        for event in events:
            self.write(event)
            await self.flush()
            if delay and b"content_block_delta" in event:
                await asyncio.sleep(delay)


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    """The SSE events that stream one content block (text word by word, tool input whole)."""
    if block["type"] == "text":
        start = {"type": "text", "text": ""}
        words = block["text"].split(" ")
        deltas = [
            {"type": "text_delta", "text": word if i == 0 else " " + word}
            for i, word in enumerate(words)
        ]
    else:
        start = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block["input"])}]
    return [
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        ),
        *(
            sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            for delta in deltas
        ),
        sse("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


class CountTokensHandler(web.RequestHandler):
    def post(self) -> None:
        if json_object_or_refuse(self) is not None:
            self.finish({"input_tokens": INPUT_TOKENS})


class RequestsHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"requests": self.settings["state"].requests})

    def delete(self) -> None:
        self.settings["state"].requests.clear()
        self.set_status(204)


class ScriptHandler(web.RequestHandler):
    def delete(self) -> None:
        self.settings["state"].script.clear()
        self.set_status(204)

    def post(self) -> None:
        data = json.loads(self.request.body)
        state: State = self.settings["state"]
        state.script.extend(data.get("replies", []))
        self.set_status(204)


def make_app(state: State | None = None) -> web.Application:
    return web.Application(
        [
            # Under any path prefix too: the provider presets' base URLs have one
            # (OpenRouter's /api, GLM's /api/anthropic), and tests point them here.
            (r"(?:/[a-z0-9-]+)*/v1/messages", MessagesHandler),
            (r"(?:/[a-z0-9-]+)*/v1/messages/count_tokens", CountTokensHandler),
            (r"/_fake/requests", RequestsHandler),
            (r"/_fake/script", ScriptHandler),
        ],
        state=state or State(),
    )


async def serve(port: int) -> None:
    make_app().listen(port, "127.0.0.1")
    print(f"fake Anthropic API on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


@contextmanager
def running() -> Iterator[str]:
    """The fake in a process of its own on a free port, for scripts (the tests have
    their fixture): its URL."""
    from jupyter_sac.stack import free_port

    from .stack import http_status, poll_until, stop_process

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sac_testing.fake_anthropic", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # its access log: one line per call of a long campaign
    )
    url = f"http://127.0.0.1:{port}"
    try:
        poll_until(lambda: http_status(url + "/_fake/requests") == 200, 60, "fake Anthropic API")
        yield url
    finally:
        stop_process(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
