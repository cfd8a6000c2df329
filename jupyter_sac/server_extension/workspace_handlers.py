"""The sandbox's workspace endpoints: sync status, a sync now, previews of files
for the sidebar (text, editable; images; an info card for anything else), and
folders as ZIP archives (download, and upload unpacked into a folder)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import mimetypes
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..errors import ApiError
from ..rules.workspace import (
    MAX_ARCHIVE_UPLOAD_BYTES,
    PathError,
    archive_filename,
    clean_relative,
    content_disposition,
)
from ..streamed_body import StreamedBody
from .base import CONTENTS_RESOURCE, SacHandler
from .workspace_archive import folder_archive, folder_of, unpack

log = logging.getLogger("jupyter_sac.workspace")

TEXT_PREVIEW_BYTES = 1024 * 1024
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


def preview_kind(name: str, head: bytes) -> str:
    """text, image or binary, from the name and the first bytes."""
    mime = mimetypes.guess_type(name)[0] or ""
    if mime in IMAGE_TYPES:
        return "image"
    if b"\x00" in head:
        return "binary"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut at the end of the sample is still text.
        if e.start < len(head) - 4:
            return "binary"
    return "text"


class WorkspaceHandler(SacHandler):
    """GET: the sync's status (groups, usage against quota, refused files).
    POST: sync now (pull, then upload what changed)."""

    # A sync writes the workspace's files, as Jupyter's contents API does.
    auth_resource = CONTENTS_RESOURCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(json.dumps(self.settings["sac_workspace_sync"].status()))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.finish(json.dumps(await self.settings["sac_workspace_sync"].sync()))


class PreviewHandler(SacHandler):
    """GET ?path=<workspace path>: a preview. PUT ?path= {"text"}: save a text file."""

    auth_resource = CONTENTS_RESOURCE

    def _file(self) -> tuple[str, Path]:
        raw = self.get_argument("path", "")
        try:
            wpath = clean_relative(raw)
        except PathError as e:
            raise ApiError(400, "invalid_field", f"path: {e}", field="path") from None
        root = Path(self.settings["sac_workspace_sync"].root).resolve()
        path = (root / wpath).resolve()
        if root not in path.parents:
            raise ApiError(400, "invalid_field", "path: leaves the workspace", field="path")
        return wpath, path

    @web.authenticated
    @authorized
    async def get(self) -> None:
        wpath, path = self._file()
        if not path.is_file():
            raise ApiError(404, "not_found", f"no file {wpath}")
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(min(size, TEXT_PREVIEW_BYTES))
        kind = preview_kind(path.name, head[:8192])
        if kind == "image" and self.get_argument("raw", "") == "1":
            self.set_header("X-Content-Type-Options", "nosniff")
            self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self.finish(path.read_bytes(), set_content_type=mime)
            return
        body: dict[str, Any] = {
            "path": wpath,
            "kind": kind,
            "size": size,
            "mime": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
            "mtime": path.stat().st_mtime,
            "editable": kind == "text" and not wpath.startswith("public/"),
        }
        if kind == "text":
            body["text"] = head.decode("utf-8", "replace")
            body["truncated"] = size > TEXT_PREVIEW_BYTES
        elif kind == "image":
            body["url"] = f"{self.base_url}sac/api/workspace/preview?path={wpath}&raw=1"
        else:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            body["sha256"] = digest.hexdigest()
        self.finish(json.dumps(body))

    @web.authenticated
    @authorized
    async def put(self) -> None:
        wpath, path = self._file()
        if wpath.startswith("public/"):
            raise ApiError(403, "forbidden", "the public workspace is read-only")
        text = self.json_body()["text"]  # {"text": "..."} (openapi.yaml)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".sac-part")
        tmp.write_text(text, "utf-8")
        os.replace(tmp, path)  # the watcher uploads it
        self.finish(json.dumps({"path": wpath, "size": path.stat().st_size}))


@web.stream_request_body
class ArchiveHandler(StreamedBody, SacHandler):
    """GET ?path=<folder>: the folder as a ZIP, streamed as it is made.
    POST ?path=<folder>[&overwrite=true] with a ZIP as the body: unpacked into the
    folder once all of it has passed the checks (workspace_archive.unpack)."""

    auth_resource = CONTENTS_RESOURCE
    _upload: IO[bytes] | None = None

    def upload_limit(self) -> int:
        return MAX_ARCHIVE_UPLOAD_BYTES

    @property
    def root(self) -> Path:
        return Path(self.settings["sac_workspace_sync"].root).resolve()

    def folder_path(self, required: bool) -> str:
        raw = self.get_argument("path", "").rstrip("/")
        if not raw and not required:
            return ""  # the whole workspace
        try:
            return clean_relative(raw)
        except PathError as e:
            raise ApiError(400, "invalid_field", f"path: {e}", field="path") from None

    async def prepare(self) -> None:  # type: ignore[override]  # as APIHandler's
        await super().prepare()  # jupyter_server: who is calling, XSRF, origin
        if self.request.method != "POST":
            return
        # The body is kept only for a caller who may write here: asked before it is
        # taken (the decorators on post() run once it is all in).
        user = self.current_user
        if not user:
            raise web.HTTPError(403)
        if not self.authorizer.is_authorized(self, user, "write", self.auth_resource):
            raise web.HTTPError(
                403, f"{user.username} is not authorized to write on resource: {self.auth_resource}"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        # Unnamed, on the workspace's own disk: gone with the request whatever happens.
        upload = self._upload = tempfile.TemporaryFile(dir=self.root)  # noqa: SIM115 (closed in on_finish)

        def keep(chunk: bytes) -> None:
            upload.write(chunk)

        if not self.accept_body(keep):
            raise ApiError(
                413, "too_large", f"archives are limited to {MAX_ARCHIVE_UPLOAD_BYTES} bytes"
            )

    def on_finish(self) -> None:
        if self._upload is not None:
            self._upload.close()

    @web.authenticated
    @authorized
    async def get(self) -> None:
        wpath = self.folder_path(required=False)
        top = folder_of(self.root, wpath)
        archive = await asyncio.to_thread(folder_archive, top)
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", content_disposition(archive_filename(wpath)))
        self.set_header("Content-Length", str(len(archive)))
        self.set_header("Cache-Control", "no-store")
        blocks = iter(archive)
        try:
            # One block in memory at a time: read off the loop, then written and
            # flushed (which waits for the client) before the next is read.
            while (block := await asyncio.to_thread(next, blocks, None)) is not None:
                self.write(block)
                await self.flush()
        except StreamClosedError:
            return  # the client went away
        except (OSError, ValueError, RuntimeError) as e:
            # A file changed or vanished while it was sent: the ZIP cannot be finished
            # (its length is out); the connection is closed, so the client sees it cut.
            log.warning("workspace archive of %s broken off: %s", wpath or "/", e)
            self.request.connection.close()
            return
        self.finish()

    @web.authenticated
    @authorized
    async def post(self) -> None:
        wpath = self.folder_path(required=True)
        if self.body_too_large:
            raise ApiError(
                413, "too_large", f"archives are limited to {MAX_ARCHIVE_UPLOAD_BYTES} bytes"
            )
        overwrite = self.get_argument("overwrite", "false")
        if overwrite not in ("true", "false"):
            raise ApiError(400, "invalid_field", "overwrite: true or false", field="overwrite")
        assert self._upload is not None  # prepare() made it
        sync = self.settings["sac_workspace_sync"]
        result = await asyncio.to_thread(
            unpack, self._upload, self.root, wpath, overwrite == "true", dict(sync.usage)
        )
        self.finish(json.dumps(result))
