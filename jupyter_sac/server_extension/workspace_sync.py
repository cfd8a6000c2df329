"""Workspace sync: /workspace kept in step with the service's object store.

- At start, ``pull`` downloads every file the agent may see (its private and
  output files, the public tree, one tree per group of its owner) that is missing
  or older here, then ``scan`` uploads what is here and not yet stored.
- While the server runs, a watcher (watchfiles) uploads each change after a short
  debounce and deletes removed files; the manifest is polled (ETag) so files other
  agents write to a shared group appear.
- On stop, ``flush`` uploads what is left.

Each upload names the version it replaces. If someone else changed the file first
(409), both are kept: this sandbox's version is stored under a conflict name and
the other version takes the original name. The public tree is read-only: a local
change there is put back to the stored version.

What was last stored is recorded in ``<state>/workspace.json`` (path -> sha256,
version, size, mtime), so a restart does not upload or download unchanged files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ..rules.workspace import AGENT_AREAS, conflict_name, ignored
from .service_client import TRANSFER_TIMEOUT, ServiceClient

log = logging.getLogger("jupyter_sac.workspace_sync")

FETCH_CONCURRENCY = 8
# Files fetched from the service in one request (their total is also capped).
BATCH_FILES = 100
BATCH_BYTES = 16 * 1024 * 1024
PUSH_CONCURRENCY = 4
PART_SUFFIX = ".sac-part"
READ_ONLY_AREA = "public/"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class WorkspaceSync:
    def __init__(
        self,
        service: ServiceClient,
        root: Path,
        state_file: Path,
        who: str,
        on_output: Callable[[str, str, int], None] | None = None,
    ):
        self.base = service.base + "agent/workspace"
        # The extension's one service client (whole files: TRANSFER_TIMEOUT per
        # request), and its client without the token for presigned URLs.
        self.client = service.client
        self.plain = service.plain
        self.root = root
        self.state_file = state_file
        self.who = who
        self.on_output = on_output
        self.record: dict[str, dict[str, Any]] = self._load()
        self.etag: str | None = None
        self.groups: list[str] = []
        self.usage: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.last_pull: float | None = None
        self.last_error: str | None = None
        self.uploaded = 0
        self.downloaded = 0
        self._lock = asyncio.Lock()
        self._retry = False  # an upload met a 5xx: the next poll scans again
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_thread = threading.Event()

    # ---- the record of what was last stored ---------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.state_file.read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record), "utf-8")
        os.replace(tmp, self.state_file)

    def _remember(
        self, wpath: str, remote: dict[str, Any], local: Path, st: os.stat_result | None = None
    ) -> None:
        """Record ``remote`` as what ``local`` holds; ``st``: the file's stat taken
        before its bytes were read (default: now, for a file just placed)."""
        st = st or local.stat()
        self.record[wpath] = {
            "sha256": remote["sha256"],
            "version": remote["version"],
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }

    def _unchanged(self, wpath: str, local: Path) -> bool:
        """The local file is what was last stored (by size and mtime: no hashing)."""
        mine = self.record.get(wpath)
        try:
            st = local.stat()
        except OSError:
            return False
        return bool(mine) and st.st_size == mine["size"] and st.st_mtime_ns == mine["mtime_ns"]

    # ---- layout ---------------------------------------------------------------------

    def ensure_layout(self) -> None:
        for area in (*AGENT_AREAS, "public", "group"):
            (self.root / area).mkdir(parents=True, exist_ok=True)
        for group in self.groups:
            with contextlib.suppress(OSError):
                (self.root / "group" / group).mkdir(parents=True, exist_ok=True)

    def wpath_of(self, path: Path) -> str | None:
        """The workspace path of a local file, if it is one the sync handles."""
        try:
            rel = path.relative_to(self.root).as_posix()
        except ValueError:
            return None
        area = rel.split("/", 1)[0]
        if area not in ("private", "output", "public", "group") or "/" not in rel:
            return None
        if area == "group" and rel.count("/") < 2:
            return None
        return None if ignored(rel) else rel

    def local_files(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for area in ("private", "output", "public", "group"):
            out.update(self.files_under(self.root / area))
        return out

    def files_under(self, top: Path) -> dict[str, Path]:
        """The files the sync handles under the folder ``top``, by workspace path."""
        out: dict[str, Path] = {}
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not ignored(d)]
            for name in files:
                path = Path(folder) / name
                wpath = self.wpath_of(path)
                if wpath is not None and path.is_file() and not path.is_symlink():
                    out[wpath] = path
        return out

    # ---- pulling ----------------------------------------------------------------------

    async def manifest(self) -> dict[str, Any] | None:
        headers = {"If-None-Match": self.etag} if self.etag else {}
        resp = await self.client.get(self.base, headers=headers, timeout=TRANSFER_TIMEOUT)
        if resp.status_code == 304:
            return None
        resp.raise_for_status()
        self.etag = resp.headers.get("ETag")
        return resp.json()

    async def pull(self) -> int:
        """Bring remote changes here; the number of files downloaded."""
        async with self._lock:
            data = await self.manifest()
            self.last_pull = time.time()
            if data is None:
                return 0
            self.groups = data["groups"]
            self.usage = data["usage"]
            self.ensure_layout()
            remote = {f["path"]: f for f in data["files"]}
            fetch: list[dict[str, Any]] = []
            for wpath, entry in remote.items():
                local = self.root / wpath
                mine = self.record.get(wpath)
                if mine and mine.get("refused"):
                    continue  # ours was refused (e.g. over quota): keep it, the error shows
                if mine and mine["sha256"] == entry["sha256"] and local.exists():
                    if wpath.startswith(READ_ONLY_AREA) and not self._unchanged(wpath, local):
                        fetch.append(entry)  # a local edit of a read-only file: undo it
                    elif mine["version"] != entry["version"]:
                        mine["version"] = entry["version"]
                    continue
                if local.exists() and mine is None and file_sha256(local) == entry["sha256"]:
                    self._remember(wpath, entry, local)  # already here (e.g. a lost record)
                    continue
                if (
                    local.exists()
                    and not wpath.startswith(READ_ONLY_AREA)
                    and (mine is None or not self._unchanged(wpath, local))
                ):
                    # Changed here and there: keep ours under a conflict name.
                    await self._keep_as_conflict(wpath, local)
                fetch.append(entry)
            gone = [w for w in self.record if w not in remote and not self.record[w].get("refused")]
            for wpath in gone:
                local = self.root / wpath
                if not local.exists() or self._unchanged(wpath, local):
                    with contextlib.suppress(FileNotFoundError):
                        local.unlink()
                    self.record.pop(wpath, None)
                    self._output("deleted", wpath, 0)
                else:
                    self.record.pop(wpath, None)  # changed here: uploaded by the next scan
            await self._fetch(fetch)
            self._save()
            return len(fetch)

    async def _fetch(self, entries: list[dict[str, Any]]) -> None:
        """Download entries: presigned ones one by one (the object store serves them),
        the rest in batches from the service (one request for many small files)."""
        limit = asyncio.Semaphore(FETCH_CONCURRENCY)
        single = [e for e in entries if e.get("url")]
        batches: list[list[dict[str, Any]]] = [[]]
        for entry in (e for e in entries if not e.get("url")):
            last = batches[-1]
            if last and (len(last) >= BATCH_FILES or sum(e["size"] for e in last) >= BATCH_BYTES):
                batches.append([])
            batches[-1].append(entry)

        async def one(entry: dict[str, Any]) -> None:
            async with limit:
                await self._download(entry)

        async def batch(group: list[dict[str, Any]]) -> None:
            async with limit:
                leftover = await self._download_batch(group)
            await asyncio.gather(*(one(e) for e in leftover))

        await asyncio.gather(*(one(e) for e in single), *(batch(b) for b in batches if b))

    async def _download_batch(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fetch ``entries`` in one request; those still to fetch one by one (all of
        them if a file changed meanwhile, 409)."""
        body = {"files": [{"path": e["path"], "version": e["version"]} for e in entries]}
        async with self.client.stream(
            "POST", f"{self.base}/batch", json=body, timeout=TRANSFER_TIMEOUT
        ) as resp:
            if resp.status_code == 409:
                return entries
            resp.raise_for_status()
            writer = _BatchWriter(self.root, entries)
            try:
                async for chunk in resp.aiter_bytes(1 << 20):
                    # Splitting, hashing and writing a whole chunk (often many small
                    # files) in one trip off the loop: they release the GIL and
                    # overlap with the other batches' network reads.
                    done = await asyncio.to_thread(writer.feed, chunk)
                    for entry, part, local, sha256 in done:
                        self._place(entry, part, local, sha256)
                # empty files at the end of the batch have no bytes to wait for
                for entry, part, local, sha256 in writer.feed(b""):
                    self._place(entry, part, local, sha256)
                if not writer.finished:
                    raise OSError("the batch ended early")
            finally:
                writer.close()
        return []

    async def _download(self, entry: dict[str, Any]) -> None:
        wpath = entry["path"]
        local = self.root / wpath
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + PART_SUFFIX)
        url = entry.get("url")
        client = self.plain if url else self.client
        digest = hashlib.sha256()
        async with client.stream(
            "GET", url or f"{self.base}/files/{quote(wpath)}", timeout=TRANSFER_TIMEOUT
        ) as resp:
            resp.raise_for_status()
            with part.open("wb") as f:
                async for chunk in resp.aiter_bytes(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
        self._place(entry, part, local, digest.hexdigest())

    def _place(self, entry: dict[str, Any], part: Path, local: Path, sha256: str) -> None:
        """Check a downloaded file and move it into place with its stored mtime."""
        if sha256 != entry["sha256"]:
            part.unlink(missing_ok=True)
            raise OSError(f"{entry['path']}: downloaded content does not match its sha256")
        mtime = datetime.fromisoformat(entry["mtime"]).timestamp()
        os.utime(part, (mtime, mtime))
        os.replace(part, local)
        self._remember(entry["path"], entry, local)
        self.downloaded += 1
        self._output("updated", entry["path"], entry["size"])

    async def _keep_as_conflict(self, wpath: str, local: Path) -> None:
        target = conflict_name(wpath, self.who, datetime.now(UTC))
        new_local = self.root / target
        os.replace(local, new_local)
        await self._push(target, new_local)

    # ---- pushing ----------------------------------------------------------------------

    async def scan(self) -> int:
        """Upload every local change and delete what was removed here; the number of
        files changed in the store."""
        async with self._lock:
            changed = 0
            local = await asyncio.to_thread(self.local_files)
            work = [
                (w, p)
                for w, p in local.items()
                if not w.startswith(READ_ONLY_AREA) and not self._unchanged(w, p)
            ]
            limit = asyncio.Semaphore(PUSH_CONCURRENCY)

            async def one(wpath: str, path: Path) -> bool:
                async with limit:
                    return await self._push(wpath, path)

            changed += sum(await asyncio.gather(*(one(w, p) for w, p in work)))
            for wpath in [w for w in self.record if w not in local]:
                if not wpath.startswith(READ_ONLY_AREA):
                    changed += await self._remove(wpath)
            self._save()
            revert = any(
                w.startswith(READ_ONLY_AREA) and not self._unchanged(w, p) for w, p in local.items()
            ) or any(w.startswith(READ_ONLY_AREA) and w not in local for w in self.record)
        if revert:
            await self.revert_read_only()
        return changed

    async def push_paths(self, paths: set[Path]) -> None:
        """Upload or delete the given local paths (the watcher's batch)."""
        revert = False
        async with self._lock:
            for path in sorted(paths):
                wpath = self.wpath_of(path)
                if wpath is None:
                    continue
                if wpath.startswith(READ_ONLY_AREA):
                    revert = revert or not self._unchanged(wpath, path)
                    continue
                if path.is_file() and not path.is_symlink():
                    if not self._unchanged(wpath, path):
                        await self._push(wpath, path)
                elif path.is_dir() and not path.is_symlink():
                    # A new folder. The watcher watches it only once it has seen it
                    # made, so a file written into it at once (mkdir -p && write,
                    # unzip) has no event of its own: look for such files here.
                    found = await asyncio.to_thread(self.files_under, path)
                    for inner, local in sorted(found.items()):
                        if not inner.startswith(READ_ONLY_AREA) and not self._unchanged(
                            inner, local
                        ):
                            await self._push(inner, local)
                elif not path.exists():
                    await self._remove_under(wpath)
            self._save()
        if revert:
            await self.revert_read_only()

    async def revert_read_only(self) -> None:
        """Put the stored version back over a local change to a read-only file."""
        self.etag = None  # a full manifest: pull() compares every file
        await self.pull()

    async def _push(self, wpath: str, path: Path) -> bool:
        mine = self.record.get(wpath)
        try:
            # One read for both the hash and the upload, and the stat taken before it:
            # a file still being written (Jupyter writes a saved file in place) is
            # stored as read, and its later bytes show as a change at the next scan.
            # (Hashing, then reading again, then stat-ing after the upload recorded
            # the final size and time against the empty first version, so the
            # change was never uploaded.)
            stat, data, sha = await asyncio.to_thread(_snapshot, path)
        except OSError:
            return False  # gone again already: the delete comes with the next event
        if mine and mine["sha256"] == sha:
            mine["size"], mine["mtime_ns"] = stat.st_size, stat.st_mtime_ns
            return False
        headers = {
            "X-Sac-Base-Version": str(mine["version"] if mine else 0),
            "X-Sac-Mtime": str(stat.st_mtime),
        }
        resp = await self.client.put(
            f"{self.base}/files/{quote(wpath)}",
            content=data,
            headers=headers,
            timeout=TRANSFER_TIMEOUT,
        )
        if resp.status_code == 409:
            # Someone changed it first: keep ours aside, take theirs.
            current = resp.json().get("current")
            await self._keep_as_conflict(wpath, path)
            if current:
                current["url"] = None
                await self._download(current)
            return True
        if resp.status_code >= 500:
            # The service (or its database) is away for now: not a refusal. The
            # file stays unrecorded, so the next scan (the next poll, the flush at
            # stop, the next start) sends it again.
            message = _message(resp)
            self.errors[wpath] = message
            self._retry = True
            log.warning("workspace: %s not stored yet (will retry): %s", wpath, message)
            return False
        if resp.status_code >= 400:
            message = _message(resp)
            self.errors[wpath] = message
            log.warning("workspace: %s was not stored: %s", wpath, message)
            # Remember what we tried, so the same content is not retried in a loop.
            self.record[wpath] = {
                "sha256": sha,
                "version": mine["version"] if mine else 0,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "refused": True,
            }
            return False
        self.errors.pop(wpath, None)
        self._remember(wpath, resp.json(), path, stat)
        self.uploaded += 1
        self._output("created" if mine is None else "modified", wpath, stat.st_size)
        return True

    async def _remove_under(self, wpath: str) -> None:
        # A removed folder: every recorded file under it.
        for known in [w for w in self.record if w == wpath or w.startswith(wpath + "/")]:
            await self._remove(known)

    async def _remove(self, wpath: str) -> int:
        mine = self.record.pop(wpath, None)
        self.errors.pop(wpath, None)
        if mine is None or (mine.get("refused") and not mine["version"]):
            return 0
        resp = await self.client.delete(
            f"{self.base}/files/{quote(wpath)}",
            headers={"X-Sac-Base-Version": str(mine["version"])},
            timeout=TRANSFER_TIMEOUT,
        )
        if resp.status_code not in (204, 404, 409):
            self.record[wpath] = mine
            self.errors[wpath] = _message(resp)
            return 0
        self._output("deleted", wpath, 0)
        return 1

    def _output(self, action: str, wpath: str, size: int) -> None:
        if self.on_output is not None and wpath.startswith("output/"):
            try:
                self.on_output(action, wpath, size)
            except Exception:
                log.exception("could not emit the output event")

    # ---- running --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "groups": self.groups,
            "usage": self.usage,
            "last_pull": self.last_pull,
            "last_error": self.last_error,
            "errors": dict(self.errors),
            "uploaded": self.uploaded,
            "downloaded": self.downloaded,
        }

    async def sync(self) -> dict[str, Any]:
        try:
            await self.pull()
            await self.scan()
            self.last_error = None
        except (httpx.HTTPError, OSError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("workspace sync failed (will retry): %s", e)
        return self.status()

    def start(self, poll_interval: float, debounce_ms: int) -> None:
        self._tasks = [
            asyncio.create_task(self._run(poll_interval)),
            asyncio.create_task(self._watch(debounce_ms)),
        ]

    async def _run(self, poll_interval: float) -> None:
        await self.sync()
        while poll_interval > 0:
            await asyncio.sleep(poll_interval)
            try:
                await self.pull()
                if self._retry:
                    self._retry = False
                    await self.scan()
                self.last_error = None
            except (httpx.HTTPError, OSError) as e:
                self.last_error = f"{type(e).__name__}: {e}"

    async def _watch(self, debounce_ms: int) -> None:
        """Upload changes as the watcher reports them. watchfiles' blocking ``watch``
        runs in a daemon thread of ours: an anyio worker thread (what ``awatch``
        uses) is not a daemon and kept the server's process alive after Ctrl-C."""
        from watchfiles import watch

        self.root.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        batches: asyncio.Queue[set[Path]] = asyncio.Queue()

        def run() -> None:
            # No watchfiles filter: wpath_of() applies the sync's own rules, the same
            # the scans use.
            for changes in watch(
                self.root,
                watch_filter=None,
                debounce=debounce_ms,
                step=20,
                stop_event=self._stop_thread,
                rust_timeout=1000,
                raise_interrupt=False,
            ):
                batch = {Path(p) for _, p in changes}
                loop.call_soon_threadsafe(batches.put_nowait, batch)

        threading.Thread(target=run, name="sac-workspace-watch", daemon=True).start()
        while True:
            paths = await batches.get()
            try:
                await self.push_paths(paths)
            except (httpx.HTTPError, OSError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("workspace upload failed (the next scan retries): %s", e)

    async def stop(self, flush_timeout: float = 8) -> None:
        """Stop watching and upload what is left (within ``flush_timeout`` seconds:
        JupyterHub escalates to SIGTERM after 10 s, and a stop must not hang on a
        service that does not answer)."""
        self._stop_thread.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        try:
            await asyncio.wait_for(self.scan(), flush_timeout)
        except (httpx.HTTPError, OSError, TimeoutError) as e:
            log.warning("workspace flush at stop failed: %s", e)


def _snapshot(path: Path) -> tuple[os.stat_result, bytes, str]:
    """A file's stat, then its bytes and their sha256 (in that order)."""
    stat = path.stat()
    data = path.read_bytes()
    return stat, data, hashlib.sha256(data).hexdigest()


class _BatchWriter:
    """Cuts a batch download (the files' bytes back to back, in the order asked)
    into its files: each is written to its ``.sac-part`` file and hashed; a file
    is handed back (entry, part, final path, sha256) when its last byte is in."""

    def __init__(self, root: Path, entries: list[dict[str, Any]]) -> None:
        self.root = root
        self.entries = entries
        self.index = 0
        self.file: Any = None
        self.digest: Any = None
        self.left = 0
        self.local = self.part = root

    @property
    def finished(self) -> bool:
        return self.index >= len(self.entries) and self.file is None

    def _open_next(self) -> None:
        entry = self.entries[self.index]
        self.local = self.root / entry["path"]
        self.local.parent.mkdir(parents=True, exist_ok=True)
        self.part = self.local.with_name(self.local.name + PART_SUFFIX)
        self.file = self.part.open("wb")
        self.digest = hashlib.sha256()
        self.left = entry["size"]

    def _close_current(self) -> tuple[dict[str, Any], Path, Path, str]:
        entry = self.entries[self.index]
        self.file.close()
        self.file = None
        self.index += 1
        return entry, self.part, self.local, self.digest.hexdigest()

    def feed(self, chunk: bytes) -> list[tuple[dict[str, Any], Path, Path, str]]:
        done = []
        view = memoryview(chunk)  # slices of a view copy nothing
        while True:
            if self.file is None:
                if self.index >= len(self.entries):
                    if view:
                        raise OSError("the batch sent more bytes than asked")
                    return done
                self._open_next()
            piece = view[: self.left]
            self.digest.update(piece)
            self.file.write(piece)
            self.left -= len(piece)
            view = view[len(piece) :]
            if self.left == 0:
                done.append(self._close_current())
            elif not view:
                return done

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("message") or resp.text)[:500]
    except ValueError:
        return f"HTTP {resp.status_code}"
