"""A multipart/form-data body read as it arrives (the admin Workspaces page's upload).

tornado parses a form only once its whole body is in memory (and then copies the
file out of it). Here the body goes through python-multipart's streaming parser
(the one Starlette uses): the file field's bytes go to a sink (a spooled file) as
they come, and everything else a form may carry is bounded: the other fields'
bytes, the number of parts and the size of each part's headers.
"""

from __future__ import annotations

import email.message
from collections.abc import Callable

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

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
        self._file_field = file_field
        self._file_sink = file_sink
        self._parts = 0
        self._field_bytes = 0
        self._ended = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._header_bytes = 0
        self._disposition = ""
        self._target: Callable[[bytes], None] | None = None
        self.fields: dict[str, list[bytes]] = {}
        self.filename: str | None = None
        self._parser = MultipartParser(
            boundary_of(content_type),
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field_data,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_end": self._end,
            },
            # python-multipart's own per-part bounds (it raises past them).
            max_header_count=16,
            max_header_size=MAX_PART_HEADER_BYTES,
        )

    def feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except MultipartParseError as e:
            if "header" in str(e).lower():
                raise FormError(f"a form part's headers are too many or too long: {e}") from None
            raise FormError(f"a malformed multipart form: {e}") from None

    def close(self) -> None:
        if not self._ended:
            raise FormError("the form ended before its closing boundary")

    # ---- python-multipart's callbacks ---------------------------------------------

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise FormError(f"a form has at most {MAX_PARTS} parts")
        self._disposition = ""
        self._header_bytes = 0
        self._target = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise FormError(f"a form part's headers are over {MAX_PART_HEADER_BYTES} bytes")

    def _header_end(self) -> None:
        name = bytes(self._header_field).decode("latin-1").strip().lower()
        if name == "content-disposition":
            try:
                self._disposition = bytes(self._header_value).decode("utf-8")
            except UnicodeDecodeError:
                raise FormError("a form part's headers are not readable") from None
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition = email.message.Message()
        disposition["content-disposition"] = self._disposition
        name = disposition.get_param("name", header="content-disposition")
        if disposition.get_content_disposition() != "form-data" or not isinstance(name, str):
            raise FormError("a form part without a form-data name")
        filename = disposition.get_filename()
        if filename is not None:
            if name == self._file_field and self.filename is None:
                self.filename = filename
                self._target = self._file_sink
            # else: a file the form does not take: dropped
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

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start and self._target is not None:
            self._target(data[start:end])

    def _end(self) -> None:
        self._ended = True
