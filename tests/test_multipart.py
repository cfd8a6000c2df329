"""The streaming multipart/form-data reader of the admin Workspaces page, against
bodies as httpx (like a browser) writes them, cut at every place they can be cut."""

from __future__ import annotations

import os

import httpx
import pytest

from jupyter_sac.service.multipart import MAX_FIELD_BYTES, MAX_PARTS, FormError, MultipartForm

NO_FILE = {"other": ("x.bin", b"")}  # a file part makes httpx send multipart


def _form(data: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/", data=data, files=files)
    return request.headers["Content-Type"], request.read()


def _read(content_type: str, body: bytes, step: int) -> tuple[MultipartForm, bytes]:
    received = bytearray()
    form = MultipartForm(content_type, "file", received.extend)
    for start in range(0, len(body), step):
        form.feed(body[start : start + step])
    form.close()
    return form, bytes(received)


def test_fields_and_the_file_come_out_whatever_the_chunks() -> None:
    # Bytes that look like the boundary's start, and CRLFs, inside the file.
    content = b"--\r\n--x\r\n" + os.urandom(3000) + b"\r\n--"
    ctype, body = _form(
        {"_xsrf": "tok", "action": "upload", "folder": "données/2026"},
        {"file": ("naïve résumé.txt", content)},
    )
    for step in (1, 2, 3, 7, 64, 1000, len(body)):
        form, received = _read(ctype, body, step)
        assert received == content, step
        assert form.filename == "naïve résumé.txt"
        assert form.fields == {
            "_xsrf": [b"tok"],
            "action": [b"upload"],
            "folder": ["données/2026".encode()],
        }


def test_an_empty_file_input_and_other_files() -> None:
    # As a browser sends a file input left empty (httpx leaves the filename out).
    ctype = "multipart/form-data; boundary=----b"
    body = (
        b'------b\r\nContent-Disposition: form-data; name="action"\r\n\r\nupload\r\n'
        b'------b\r\nContent-Disposition: form-data; name="file"; filename=""\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n\r\n"
        b'------b\r\nContent-Disposition: form-data; name="other"; filename="x.bin"\r\n'
        b"\r\nzz\r\n------b--\r\n"
    )
    form, received = _read(ctype, body, 5)
    assert (form.filename, received, form.fields) == ("", b"", {"action": [b"upload"]})


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda: _form({"f": "x" * (MAX_FIELD_BYTES + 1)}, NO_FILE), "fields are limited"),
        (lambda: _form({f"f{i}": "x" for i in range(MAX_PARTS)}, NO_FILE), "at most"),
        (lambda: ("multipart/form-data; boundary=b", b"--b\r\nX: y\r\n\r\nz\r\n--b--"), "name"),
        (lambda: ("multipart/form-data; boundary=b", b"--b\r\n" + b"X: y\r\n" * 2000), "headers"),
        (lambda: ("multipart/form-data; boundary=b", b"--b\r\n\r\n"), "name"),
        (lambda: ("multipart/form-data", b""), "boundary"),
        (lambda: ("application/x-www-form-urlencoded", b"a=b"), "multipart"),
    ],
)
def test_forms_it_does_not_take(build, problem: str) -> None:
    with pytest.raises(FormError, match=problem):
        _read(*build(), 100)


def test_a_form_cut_short_is_refused() -> None:
    ctype, body = _form({"action": "upload"}, {"file": ("a.txt", b"abc")})
    with pytest.raises(FormError, match="ended"):
        _read(ctype, body[:-10], 100)
