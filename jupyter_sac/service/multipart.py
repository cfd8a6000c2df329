"""A multipart/form-data body read as it arrives (the admin Workspaces page's upload).

tornado parses a form only once its whole body is in memory (and then copies the
file out of it). Here the file field's bytes go to a sink (a spooled file) as they
come, and everything else a form may carry is bounded: the other fields' bytes,
the number of parts and the size of each part's headers.
"""

from __future__ import annotations

import email.message
from collections.abc import Callable

from tornado import httputil

MAX_FIELD_BYTES = 64 * 1024  # all the fields but the file, together
MAX_PARTS = 100
MAX_PART_HEADER_BYTES = 8 * 1024


class FormError(ValueError):
    """Not a form this reader takes; the message says why."""


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type (FormError if none)."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise FormError("expected a multipart/form-data body")
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            value = value.strip('"')
            if 0 < len(value) <= 70 and value.isascii():  # RFC 2046's limit
                return value.encode("ascii")
    raise FormError("the multipart/form-data body has no usable boundary")


class MultipartForm:
    """Parses a multipart/form-data body fed in pieces (``feed``, then ``close``).

    The part named ``file_field`` that has a filename goes to ``file_sink`` as it
    arrives (``filename`` records its name); other parts are kept in ``fields``
    (name -> values), at most MAX_FIELD_BYTES of them in all. Other files are
    dropped. Memory stays at about one received chunk whatever the body's size."""

    def __init__(self, content_type: str, file_field: str, file_sink: Callable[[bytes], None]):
        self._delimiter = b"--" + boundary_of(content_type)
        self._file_field = file_field
        self._file_sink = file_sink
        self._buf = bytearray()
        self._state = "preamble"  # preamble | next | headers | body | done
        self._parts = 0
        self._field_bytes = 0
        self._target: Callable[[bytes], None] | None = None
        self.fields: dict[str, list[bytes]] = {}
        self.filename: str | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data
        while self._step():
            pass

    def close(self) -> None:
        if self._state != "done":
            raise FormError("the form ended before its closing boundary")

    def _step(self) -> bool:
        """Take what the buffer allows in the current state; False: wait for more."""
        buf, delimiter = self._buf, self._delimiter
        if self._state == "preamble":
            at = buf.find(delimiter)
            if at < 0:
                del buf[: max(0, len(buf) - len(delimiter))]  # the preamble is dropped
                return False
            del buf[: at + len(delimiter)]
            self._state = "next"
            return True
        if self._state == "next":  # after a delimiter: "--" ends the form, CRLF a part
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = "done"
                buf.clear()  # the epilogue is dropped
                return False
            if buf[:2] != b"\r\n":
                raise FormError("a malformed multipart boundary")
            del buf[:2]
            self._state = "headers"
            return True
        if self._state == "headers":  # header lines, then an empty line
            if buf.startswith(b"\r\n"):  # no header lines
                headers, end = b"", 2
            else:
                at = buf.find(b"\r\n\r\n", 0, MAX_PART_HEADER_BYTES + 4)
                if at < 0:
                    if len(buf) > MAX_PART_HEADER_BYTES:
                        raise FormError(
                            f"a form part's headers are over {MAX_PART_HEADER_BYTES} bytes"
                        )
                    return False
                headers, end = bytes(buf[:at]), at + 4
            self._start_part(headers)
            del buf[:end]
            self._state = "body"
            return True
        if self._state == "body":
            end = buf.find(b"\r\n" + delimiter)
            if end < 0:
                # The last bytes may be the start of the delimiter: keep them.
                keep = len(delimiter) + 1
                if len(buf) > keep:
                    self._emit(bytes(buf[:-keep]))
                    del buf[:-keep]
                return False
            self._emit(bytes(buf[:end]))
            del buf[: end + 2 + len(delimiter)]
            self._state = "next"
            return True
        buf.clear()  # done: the epilogue is dropped
        return False

    def _start_part(self, raw: bytes) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise FormError(f"a form has at most {MAX_PARTS} parts")
        try:
            headers = httputil.HTTPHeaders.parse(raw.decode("utf-8"))
        except (UnicodeDecodeError, httputil.HTTPInputError):
            raise FormError("a form part's headers are not readable") from None
        disposition = email.message.Message()
        disposition["content-disposition"] = headers.get("Content-Disposition", "")
        name = disposition.get_param("name", header="content-disposition")
        if disposition.get_content_disposition() != "form-data" or not isinstance(name, str):
            raise FormError("a form part without a form-data name")
        filename = disposition.get_filename()
        if filename is not None:
            if name == self._file_field and self.filename is None:
                self.filename = filename
                self._target = self._file_sink
            else:
                self._target = None  # a file the form does not take: dropped
            return
        values = self.fields.setdefault(name, [])
        values.append(b"")
        index = len(values) - 1

        def keep(data: bytes) -> None:
            self._field_bytes += len(data)
            if self._field_bytes > MAX_FIELD_BYTES:
                raise FormError(f"a form's fields are limited to {MAX_FIELD_BYTES} bytes")
            values[index] += data

        self._target = keep

    def _emit(self, data: bytes) -> None:
        if data and self._target is not None:
            self._target(data)
