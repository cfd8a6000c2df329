"""What every SAC widget shares: background work, widget updates on the kernel's
thread, readable errors and a plain-text summary for consoles."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

import ipywidgets as w

from ..client import Client, SacError

log = logging.getLogger("jupyter_sac.widgets")

ERROR_STYLE = "color: var(--jp-error-color1, #c62828)"
MUTED_STYLE = "color: var(--jp-ui-font-color2, #757575)"
OK_STYLE = "color: var(--jp-success-color1, #2e7d32)"


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def error_text(e: BaseException) -> str:
    """A failure as one readable line: the service's own message, never a traceback."""
    if isinstance(e, SacError):
        if e.status:
            return f"{e.message} (HTTP {e.status}, {e.code})"
        return e.message
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def error_html(message: str) -> str:
    return f'<span style="{ERROR_STYLE}">{esc(message)}</span>'


def muted_html(message: str) -> str:
    return f'<span style="{MUTED_STYLE}">{esc(message)}</span>'


def plain_text(markup: str) -> str:
    """The text of a bit of HTML (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compact_json(value: Any, limit: int = 300) -> str:
    return shorten(json.dumps(value, ensure_ascii=False, default=str), limit)


def describe_input(tool: str, tool_input: Any, limit: int = 300) -> str:
    """A short rendering of a tool call's input: the command, the path, the URL..."""
    if not isinstance(tool_input, dict):
        return compact_json(tool_input, limit)
    for key in ("command", "file_path", "notebook_path", "path", "url", "pattern", "query"):
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            rest = {k: v for k, v in tool_input.items() if k != key}
            text = value if not rest else f"{value}  {compact_json(rest, limit)}"
            return shorten(text, limit)
    if tool == "TodoWrite" and isinstance(tool_input.get("todos"), list):
        return f"{len(tool_input['todos'])} todo(s)"
    return compact_json(tool_input, limit)


class UiThread:
    """Runs widget updates where the widgets live.

    In a kernel the widgets belong to the kernel's main thread, whose event loop is
    running while a cell executes; updates from worker threads are handed to that
    loop (in order) so they never interleave with the frontend's messages or each
    other. Where no loop runs (a plain console, a script) they run at once, one at a
    time."""

    def __init__(self) -> None:
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self.thread = threading.current_thread()
        self._lock = threading.RLock()

    @property
    def interactive(self) -> bool:
        """A kernel (or another event loop) owns the widgets."""
        return self.loop is not None

    def __call__(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.loop is None or threading.current_thread() is self.thread:
            with self._lock:
                _safely(fn, *args)
            return
        # RuntimeError: the loop is closed, the kernel is going away.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(functools.partial(_safely, fn, *args))


def _safely(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("a SAC widget update failed")


def close_tree(widgets: Iterable[Any]) -> None:
    """Close widgets and everything they contain."""
    for widget in list(widgets):
        children = getattr(widget, "children", None)
        if children:
            close_tree(children)
        if isinstance(widget, w.Widget):
            widget.close()


class SacWidget(w.VBox):
    """Base of the SAC widgets: background threads, updates through ``UiThread``,
    a plain-text summary in consoles, and ``close()`` that ends what it started."""

    def __init__(self, client: Client | None = None, **kwargs: Any) -> None:
        # The client first: without a hub URL and token this raises its advice
        # before any widget exists.
        self._owns_client = client is None and self._wants_client()
        self.client: Client | None = Client() if self._owns_client else client
        super().__init__(**kwargs)
        self._ui = UiThread()
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self._closing = threading.Event()

    def _wants_client(self) -> bool:
        return True

    # ---- work off the kernel's thread ---------------------------------------------

    def _spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> threading.Thread | None:
        """Run ``fn(*args)`` in a daemon thread (exceptions are logged, not raised)."""
        if self._closing.is_set():
            return None

        def run() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("a SAC widget task failed")
            finally:
                with self._threads_lock:
                    self._threads.discard(thread)

        thread = threading.Thread(target=run, name=f"sac-widget-{name}", daemon=True)
        with self._threads_lock:
            self._threads.add(thread)
        thread.start()
        return thread

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Update widgets from any thread (dropped once the widget is closed)."""

        def apply() -> None:
            if not self._closing.is_set():
                fn(*args)

        self._ui(apply)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the widget's background work is done (for scripts and
        consoles; in a notebook the widget updates by itself). True if it is."""
        with self._threads_lock:
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for thread in threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in threads)

    @property
    def busy(self) -> bool:
        """Background work of this widget is under way."""
        with self._threads_lock:
            return any(t.is_alive() for t in self._threads)

    def close(self) -> None:
        """Close the widget and its parts; background work ends, and a client the
        widget made for itself is closed once that work is done."""
        if not getattr(self, "_closing", None) or self._closing.is_set():
            super().close()
            return
        self._closing.set()
        self._on_close()
        close_tree(self.children)
        super().close()
        if self._owns_client and self.client is not None:
            client = self.client
            with self._threads_lock:
                threads = list(self._threads)
            extra = self._threads_to_join()

            def close_client() -> None:
                for thread in [*threads, *extra]:
                    thread.join()
                try:
                    client.close()
                except Exception:
                    log.exception("closing the widget's client failed")

            # RuntimeError: interpreter shutdown, the daemon threads die with it.
            with contextlib.suppress(RuntimeError):
                threading.Thread(target=close_client, name="sac-widget-close", daemon=True).start()

    def _on_close(self) -> None:
        """Stop what the widget runs by itself (overridden)."""

    def _threads_to_join(self) -> list[threading.Thread]:
        return []

    # ---- plain text -----------------------------------------------------------------

    def summary(self) -> str:
        """What the widget shows, as plain text."""
        return type(self).__name__

    def __repr__(self) -> str:
        try:
            return self.summary()
        except Exception as e:  # a repr must not fail
            return f"<{type(self).__name__}: {error_text(e)}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/plain"] = repr(self)
        return data
