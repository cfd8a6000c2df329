"""The sandbox's workspace endpoints: sync status, a sync now, and previews of files
for the sidebar (text, editable; images; an info card for anything else)."""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import ApiError
from ..rules.workspace import PathError, clean_relative
from .base import CONTENTS_RESOURCE, SacHandler

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
