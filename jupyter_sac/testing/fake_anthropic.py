"""A scripted fake of the Anthropic Messages API (the model edge of the machine).

Speaks the real wire protocol: ``POST /v1/messages`` answered as server-sent
events when ``"stream": true`` (message_start, content_block_*, message_delta,
message_stop) or as one JSON message otherwise. It records every request
(headers and body) for tests to inspect at ``GET /_fake/requests`` and accepts
the next answers at ``POST /_fake/script`` (a list of strings; when empty it
answers "ok").

Run: ``python -m jupyter_sac.testing.fake_anthropic --port 9999``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import Any

from tornado import web

INPUT_TOKENS = 17
CACHE_READ_TOKENS = 3


class State:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[str] = []

    def next_text(self) -> str:
        return self.script.pop(0) if self.script else "ok"


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class MessagesHandler(web.RequestHandler):
    @property
    def state(self) -> State:
        return self.settings["state"]

    async def post(self) -> None:
        body = json.loads(self.request.body or b"{}")
        self.state.requests.append(
            {
                "path": self.request.path,
                "query": self.request.query,
                "headers": dict(self.request.headers),
                "body": body,
            }
        )
        text = self.state.next_text()
        model = body.get("model", "claude-test")
        output_tokens = max(1, len(text.split()))
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
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
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
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
            sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            sse("ping", {"type": "ping"}),
        ]
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            events.append(
                sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
            )
        events += [
            sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            ),
            sse("message_stop", {"type": "message_stop"}),
        ]
        for event in events:
            self.write(event)
            await self.flush()


class CountTokensHandler(web.RequestHandler):
    def post(self) -> None:
        self.finish({"input_tokens": INPUT_TOKENS})


class RequestsHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"requests": self.settings["state"].requests})

    def delete(self) -> None:
        self.settings["state"].requests.clear()
        self.set_status(204)


class ScriptHandler(web.RequestHandler):
    def post(self) -> None:
        data = json.loads(self.request.body)
        state: State = self.settings["state"]
        state.script.extend(data.get("replies", []))
        self.set_status(204)


def make_app(state: State | None = None) -> web.Application:
    return web.Application(
        [
            (r"/v1/messages", MessagesHandler),
            (r"/v1/messages/count_tokens", CountTokensHandler),
            (r"/_fake/requests", RequestsHandler),
            (r"/_fake/script", ScriptHandler),
        ],
        state=state or State(),
    )


async def serve(port: int) -> None:
    make_app().listen(port, "127.0.0.1")
    print(f"fake Anthropic API on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
