"""The extension's chat WebSocket (``sac/api/chat/events``) fuzzed with hypothesis:
schemathesis generates HTTP requests, not WebSocket frames.

Each case opens the socket with generated query arguments (any Unicode in
``session_id`` and ``since``) and the right token or a wrong one, then sends
generated frames (text in any script, binary, empty, and now and then one past the
server's message limit). What must hold:

- a refused handshake is a 4xx with the API's JSON error (``{"error", "message"}``),
  never a 5xx or a page;
- an accepted socket either stays open (what the client sends is ignored: it only
  listens) or is closed cleanly, with a close code that says why (1009 for a frame
  that is too large), never dropped without one (1006) or closed as a server error
  (1011), and whatever it sends is JSON (one exception, see ``dropped_by_proxy``);
- the agent's server logs no traceback meanwhile (read from the stack's log).
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

from .fuzz import FuzzRun

# Past jupyter_server's (tornado's) 10 MiB limit on one WebSocket message.
HUGE_FRAME = "x" * (11 * 1024 * 1024)
# How long a case listens for the server's answer to its frames.
LISTEN_SECONDS = 0.2
# How long a frame may take to leave: past it, nobody reads the connection any more.
WRITE_SECONDS = 30.0
# Closes that say what happened: normal, going away, unsupported data, policy, too
# large, try again later (the socket's own "too far behind").
CLEAN_CLOSES = {1000, 1001, 1003, 1008, 1009, 1013}

frames = st.lists(
    st.one_of(
        st.text(max_size=300),
        st.text(alphabet=string.printable, max_size=20).map(lambda t: json.dumps({"type": t})),
        st.binary(max_size=300),
        st.just(""),
    ),
    max_size=4,
)
queries = st.fixed_dictionaries(
    {},
    optional={
        "session_id": st.one_of(st.text(max_size=60), st.uuids().map(str)),
        "since": st.one_of(st.text(max_size=20), st.integers(-5, 10**20).map(str)),
    },
)


def fuzz_chat_socket(
    socket_url: str, token: str, *, max_examples: int, log_path: Path | None = None
) -> FuzzRun:
    """Fuzz the WebSocket at ``socket_url`` (ws://…/sac/api/chat/events) with
    ``token`` (its owner's) and a wrong one: ``max_examples`` generated cases and a
    frame past the size limit. ``log_path``: the stack's log, which must gain no
    traceback meanwhile."""
    run = FuzzRun()
    problems: dict[str, list[str]] = {}
    log_start = log_path.stat().st_size if log_path else 0

    def note(title: str, case: str) -> None:
        problems.setdefault(title, []).append(case)

    async def one_case(query: dict[str, str], sent: list[str | bytes], with_token: str) -> None:
        run.cases += 1
        url = socket_url + ("?" + urlencode(query) if query else "")
        case = f"{url} frames={[f[:40] for f in sent]!r}"
        request = HTTPRequest(url, headers={"Authorization": f"token {with_token}"})
        try:
            conn = await websocket_connect(request)
        except HTTPClientError as e:
            _check_refusal(e, case, note)
            return
        too_large = any(len(frame) > len(HUGE_FRAME) - 1 for frame in sent)
        try:
            for frame in sent:
                try:
                    await asyncio.wait_for(
                        conn.write_message(frame, binary=isinstance(frame, bytes)),
                        WRITE_SECONDS,
                    )
                except WebSocketClosedError:
                    break  # the server closed it: its close code says why, below
                except TimeoutError:
                    # The server refused a frame too large (1009) and dropped the
                    # connection while the hub's proxy was passing it on; the proxy
                    # then half-closes our side and reads no more of it, so the
                    # rest of the frame never leaves. Anything smaller must.
                    if not too_large:
                        note("a frame the server never took", case)
                    return
            while True:
                try:
                    message = await asyncio.wait_for(conn.read_message(), LISTEN_SECONDS)
                except TimeoutError:
                    return  # still open, nothing to say: the client only listens
                if message is None:
                    # The server answers a frame that is too large with 1009 and drops
                    # the connection at once (tornado's _abort), while the hub's proxy
                    # may still be passing the frame on: the proxy then gets EPIPE and
                    # drops its side too, sometimes before the 1009 reaches the client.
                    dropped_by_proxy = too_large and conn.close_code is None
                    if conn.close_code not in CLEAN_CLOSES and not dropped_by_proxy:
                        note(f"socket closed without a clear close code ({conn.close_code})", case)
                    return
                try:
                    json.loads(message)
                except ValueError:
                    note("a frame from the server that is not JSON", f"{case}: {message[:200]!r}")
        finally:
            conn.close()

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(query=queries, sent=frames, right_token=st.booleans())
    def cases(query: dict[str, str], sent: list[str | bytes], right_token: bool) -> None:
        asyncio.run(one_case(query, sent, token if right_token else "not-a-token"))

    cases()
    # Once, the frame that is too large: a close that says so (1009), not a crash;
    # then the socket still opens and listens.
    asyncio.run(one_case({}, [HUGE_FRAME], token))
    asyncio.run(one_case({}, ["still there?"], token))
    if log_path is not None:
        with open(log_path, "rb") as log:
            log.seek(log_start)
            written = log.read().decode("utf-8", "replace")
        for block in written.split("Traceback (most recent call last):")[1:]:
            note("a traceback in the stack's log", block.strip()[:600])
    for title, found in problems.items():
        run.failures.append(
            {
                "code": "websocket",
                "title": title,
                "count": len(found),
                "operations": ["WS /sac/api/chat/events"],
                "example": found[0],
            }
        )
        run.schema_violations += len(found)
    return run


def _check_refusal(e: HTTPClientError, case: str, note: Callable[[str, str], None]) -> None:
    """A refused handshake: a 4xx with the API's JSON error, or a failure noted."""
    response: Any = e.response
    body = response.body if response is not None else b""
    if e.code >= 500:
        note(f"handshake answered {e.code}", f"{case}: {body[:200]!r}")
        return
    try:
        error = json.loads(body)
    except ValueError:
        error = None
    if not (isinstance(error, dict) and "error" in error and "message" in error):
        note(f"handshake refused {e.code} without the JSON error", f"{case}: {body[:200]!r}")
