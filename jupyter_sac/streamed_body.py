"""Request bodies taken as they arrive (``@web.stream_request_body`` handlers),
shared by the `sac` service's uploads and the sandbox extension's ZIP uploads:
who may send is settled before the body is kept, and a refusal waits for a body
of reasonable size to be drained so that it reaches the client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tornado.concurrent import Future, chain_future, future_set_result_unless_cancelled

# JSON bodies (every handler but the uploads) are limited to this.
MAX_JSON_BYTES = 1024 * 1024
# An upload over its limit (but within this many times it) is read to its end and
# dropped, so that its 413 reaches the client: answering mid-upload means closing
# the connection, and the hub's proxy then tells the client 503 instead.
DRAIN_FACTOR = 2


class StreamedBody:
    """The body of a ``@web.stream_request_body`` handler, taken as it arrives.

    Such a handler settles who may send the body in ``prepare()`` (refusing anyone
    else before the body is kept) and only then calls ``accept_body``, which raises
    this connection's limit from SERVER_BODY_BYTES to the handler's own and hands
    each chunk to a sink (a list, a spooled file, a parser). A body that is not
    accepted is dropped as it arrives.

    An answer given before the body is in (a refusal in ``prepare()``, tornado's
    405 for a method no handler has) waits for a body of up to ``upload_limit()``
    (what the handler takes at most) to arrive and be dropped (``finish``); a
    larger one is answered at once, and the connection closed."""

    request: Any  # the handler's request (tornado.web.RequestHandler)
    body_size = 0
    _body_limit = MAX_JSON_BYTES
    _body_sink: Callable[[bytes], None] | None = None
    _deferred_answer: Callable[[], None] | None = None

    def accept_body(self, sink: Callable[[bytes], None], limit: int | None = None) -> bool:
        """Take a body of up to ``limit`` bytes (the handler's ``upload_limit()``)
        into ``sink``; False when its Content-Length says it is too large even to
        drain (answer 413 at once)."""
        limit = self.upload_limit() if limit is None else limit
        declared = self.request.headers.get("Content-Length", "")
        self._body_limit = limit
        if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
            return False
        self.request.connection.set_max_body_size(DRAIN_FACTOR * limit)
        if not (declared.isdigit() and int(declared) > limit):
            self._body_sink = sink
        return True

    def data_received(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self._deferred_answer is not None:
            # Answered already; a body that grows past the drain limit (chunked)
            # gets the answer now, before tornado's own limit cuts it off with a bare 400.
            if self.body_size > self.upload_limit():
                self._deferred_answer()
        elif self.body_size > self._body_limit:
            self._body_sink = None  # too large: the rest is dropped, the answer is 413
        elif self._body_sink is not None:
            self._body_sink(chunk)

    @property
    def body_too_large(self) -> bool:
        return self.body_size > self._body_limit

    def upload_limit(self) -> int:
        """The most this handler takes (``accept_body``'s limit), and so the largest
        body an answer given before it is taken waits for (read and dropped as it
        comes): a refusal of a body it could have taken (a person's token on an
        agent's 16 MiB history batch) reaches the client rather than the proxy's 503."""
        return MAX_JSON_BYTES

    def finish(self, chunk: Any = None) -> Any:
        body = getattr(self.request, "_body_future", None)
        # (tornado sets _body_future on the requests of streaming handlers and
        # resolves it once the body is in.)
        if body is None or body.done():
            return super().finish(chunk)  # type: ignore[misc]
        declared = self.request.headers.get("Content-Length", "")
        drained = self.upload_limit()
        if declared.isdigit() and int(declared) > drained:
            return self._finish_and_close(chunk)
        # The server reads bodies of up to SERVER_BODY_BYTES unless told more: past
        # the drain limit (chunked), data_received answers before tornado cuts it off.
        self.request.connection.set_max_body_size(DRAIN_FACTOR * drained)
        # Answered before the body is in. Tornado would send the answer and close
        # the connection with the body's bytes unread, or still on their way; the
        # kernel then resets the connection, and the hub's proxy, often still
        # writing the body or not yet done reading the answer, tells the client
        # 503 instead of this answer (busier machines, more often). So the answer
        # waits for the body, dropped as it comes, and the connection stays usable.
        # The handler is finished meanwhile: tornado runs no method, and a write
        # raises as after any finish.
        self._body_sink = None
        self._finished = True
        done: Future[None] = Future()

        def answer() -> None:
            if self._deferred_answer is None:
                return
            self._deferred_answer = None
            self._finished = False
            if body.done():
                result = super(StreamedBody, self).finish(chunk)  # type: ignore[misc]
            else:  # the body grew past the drain limit: answer now, and close
                result = self._finish_and_close(chunk)
            chain_future(result, done)

        def body_in(future: Future[None]) -> None:
            if future.cancelled() or future.exception() is not None:
                # The client went away before sending it all: nobody to answer.
                self._deferred_answer = None
                if not done.done():
                    future_set_result_unless_cancelled(done, None)
            else:
                answer()

        self._deferred_answer = answer
        body.add_done_callback(body_in)
        return done

    def _finish_and_close(self, chunk: Any) -> Any:
        # Tornado closes the connection once this answer is out without saying so:
        # say it, or the hub's proxy sends its next request on that connection and
        # answers 503 when it is gone.
        self.set_header("Connection", "close")  # type: ignore[attr-defined]
        return super().finish(chunk)  # type: ignore[misc]
