"""Skill sync: the agent's installed skills, materialised in its Claude config.

Each installed skill becomes ``<CLAUDE_CONFIG_DIR>/skills/<command>/SKILL.md``
plus its bundle's files; Claude Code then offers it to the model and as the
slash command ``/<command>``. The service's manifest (``GET api/agent/skills``)
is polled with its ETag, so an unchanged set costs one small request; a sync
can also be asked for (``POST sac/api/skills/sync``, which the sidebar calls
after an install).

Each entry of the manifest is the version its install pins, with the checksum
the install recorded (``delivery_checksum``): a skill whose content does not hash
to it (changed behind the install's back, or not what was installed) is refused
before anything is fetched or written, and the sync fails as a whole.

Sync is incremental and all-or-nothing:
- a skill whose checksum matches what was last written (and whose folder is
  still there) is not touched, so its files keep their mtimes;
- every changed skill is verified against its checksum, then first written
  complete into a staging folder, bundles downloaded and checked against their
  sha256; any failure removes the staging folder and leaves the previous state
  exactly as it was;
- then each changed folder is swapped in by rename, removed skills are deleted,
  and the record of what was written (``.sac-skills.json``) is replaced last.

Only folders SAC wrote are ever replaced or deleted: a skill the user made by
hand with the same name is left alone and reported as a conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from ..rules.skills import (
    SkillError,
    SkillSpec,
    build_spec,
    delivery_checksum,
    read_bundle,
    skill_markdown,
)
from .service_client import ServiceClient, ServiceError

log = logging.getLogger("jupyter_sac.skills_sync")

RECORD = ".sac-skills.json"
STAGING_PREFIX = ".sac-staging-"
TRASH_PREFIX = ".sac-trash-"
# Bundle downloads in flight at once during a sync.
FETCH_CONCURRENCY = 8
SPEC_FIELDS = ("command", "title", "description", "parameters", "prompt", "tags")


class SyncError(Exception):
    pass


def entry_spec(entry: dict[str, Any]) -> SkillSpec:
    """The SkillSpec of a manifest entry (the same checks the service applied)."""
    return build_spec({k: entry[k] for k in SPEC_FIELDS if k in entry}, entry["body"])


def verify(entry: dict[str, Any]) -> None:
    """SyncError unless the entry hashes to the checksum its install recorded: the
    agent gets exactly the version its installer chose, or nothing new."""
    try:
        bundle = entry.get("bundle")
        actual = delivery_checksum(entry, bundle["sha256"] if bundle else None)
    except (KeyError, TypeError):
        actual = None
    if actual is None or actual != entry.get("checksum"):
        raise SyncError(
            f"{entry.get('command')!r}: the content does not match the checksum its install"
            " recorded; it was not written"
        )


def plan(
    record: dict[str, dict[str, Any]],
    remote: list[dict[str, Any]],
    present: set[str],
    intact: set[str],
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(to write, to remove, conflicts) from what was written last (``record``:
    command -> {"checksum"}), the manifest, the names now in ``skills/`` and those
    of them that still hold a SKILL.md."""
    write, conflicts = [], []
    wanted = {e["command"] for e in remote}
    for entry in remote:
        command = entry["command"]
        mine = record.get(command)
        if mine is None and command in present:
            conflicts.append(command)  # the user's own skill: never overwrite it
        elif mine is None or mine["checksum"] != entry["checksum"] or command not in intact:
            write.append(entry)
    remove = sorted(c for c in record if c not in wanted)
    return write, remove, conflicts


class SkillSync:
    def __init__(self, client: ServiceClient, config_dir: Path):
        self.client = client
        self.dir = config_dir / "skills"
        self.etag: str | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.status: dict[str, Any] = {
            "last_sync": None,
            "last_error": None,
            "conflicts": [],
            "written": 0,
            "removed": 0,
        }

    # ---- what is installed ------------------------------------------------------

    def read_record(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.dir / RECORD).read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def installed(self) -> dict[str, dict[str, Any]]:
        """command -> manifest entry, as last written (what a run may use)."""
        return self.read_record()

    # ---- syncing ----------------------------------------------------------------

    async def sync(self) -> dict[str, Any]:
        """Bring the skills folder in line with the service; the new status."""
        async with self._lock:
            started = time.perf_counter()
            try:
                manifest = await self.client.skills_manifest(self.etag)
                if manifest is not None:
                    etag, entries = manifest
                    await self._apply(entries)
                    self.etag = etag
                self.status["last_error"] = None
            except (ServiceError, SyncError, SkillError, OSError) as e:
                self.status["last_error"] = str(e)
                log.warning("skill sync failed (the previous skills stay): %s", e)
                raise
            except Exception as e:  # a bug, or a manifest we cannot read: say so
                self.status["last_error"] = f"{type(e).__name__}: {e}"
                log.exception("skill sync failed unexpectedly (the previous skills stay)")
                raise
            finally:
                self.status["last_sync"] = time.time()
                self.status["seconds"] = round(time.perf_counter() - started, 4)
            return dict(self.status)

    async def _apply(self, entries: list[dict[str, Any]]) -> None:
        record = await asyncio.to_thread(self.read_record)
        present, intact = await asyncio.to_thread(self._present)
        write, remove, conflicts = plan(record, entries, present, intact)
        self.status["conflicts"] = conflicts
        if conflicts:
            log.warning("skills not synced, a folder of that name is the user's: %s", conflicts)
        if not write and not remove:
            return
        for entry in write:
            verify(entry)  # before any download or write
        blobs = await self._bundles(write)
        files = await asyncio.to_thread(
            lambda: {entry["command"]: self._files(entry, blobs) for entry in write}
        )
        new_record = {c: r for c, r in record.items() if c not in remove}
        for entry in write:
            new_record[entry["command"]] = {k: v for k, v in entry.items() if k != "bundle"} | {
                "bundle_sha256": (entry.get("bundle") or {}).get("sha256")
            }
        await asyncio.to_thread(self._swap, files, remove, new_record)
        self.status["written"] = len(write)
        self.status["removed"] = len(remove)
        log.info("skills synced: %d written, %d removed", len(write), len(remove))

    async def _bundles(self, write: list[dict[str, Any]]) -> dict[str, bytes]:
        """The bundles ``write`` needs, by sha256: small ones in one request (a cold
        sync of 200 skills made 200 round trips through the hub's proxy otherwise),
        big ones one download each, a few side by side; a bundle shared by several
        skills (forks) is fetched once."""
        needed: dict[str, dict[str, Any]] = {}
        for entry in write:
            sha = (entry.get("bundle") or {}).get("sha256")
            if sha:
                needed.setdefault(sha, entry)
        if not needed:
            return {}
        blobs = await self.client.skill_bundles([e["id"] for e in needed.values()])
        gate = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def fetch(entry: dict[str, Any]) -> tuple[str, bytes]:
            async with gate:
                bundle = entry["bundle"]
                return bundle["sha256"], await self.client.skill_bundle(
                    entry["id"], bundle.get("url")
                )

        rest = [entry for sha, entry in needed.items() if sha not in blobs]
        blobs.update(await asyncio.gather(*(fetch(e) for e in rest)))
        return blobs

    def _files(self, entry: dict[str, Any], blobs: dict[str, bytes]) -> dict[str, bytes]:
        """Every file of one skill folder, checked (nothing is written yet)."""
        spec = entry_spec(entry)
        out: dict[str, bytes] = {}
        bundle = entry.get("bundle")
        if bundle:
            data = blobs[bundle["sha256"]]
            if hashlib.sha256(data).hexdigest() != bundle["sha256"]:
                raise SyncError(f"{spec.command}: the bundle does not match its sha256")
            out.update(read_bundle(data))
        out["SKILL.md"] = skill_markdown(spec).encode()
        return out

    def _present(self) -> tuple[set[str], set[str]]:
        """The names in ``skills/``, and those that are folders with a SKILL.md."""
        try:
            names = {p.name for p in self.dir.iterdir() if not p.name.startswith(".")}
        except FileNotFoundError:
            return set(), set()
        return names, {n for n in names if (self.dir / n / "SKILL.md").is_file()}

    def _swap(
        self,
        files: dict[str, dict[str, bytes]],
        remove: list[str],
        record: dict[str, dict[str, Any]],
    ) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._clean_leftovers()
        staging = self.dir / (STAGING_PREFIX + secrets.token_hex(6))
        writes = [
            (staging / command / rel, data)
            for command, content in files.items()
            for rel, data in content.items()
        ]
        try:
            # Every folder first, then every file: on ext4 here, creating a folder and
            # then files in it, one skill after another, measured 7x slower for 200
            # skills (458 ms against 61 ms) than the two passes.
            for folder in sorted({target.parent for target, _ in writes}):
                folder.mkdir(parents=True, exist_ok=True)
            for target, data in writes:
                target.write_bytes(data)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # Everything is on disk: swap folders in (renames within one filesystem).
        trash = self.dir / (TRASH_PREFIX + secrets.token_hex(6))
        trash.mkdir()
        for command in files:
            current = self.dir / command
            if current.exists():
                current.rename(trash / command)
            (staging / command).rename(current)
        for command in remove:
            current = self.dir / command
            if current.exists():
                current.rename(trash / command)
        tmp = self.dir / f"{RECORD}.{secrets.token_hex(4)}"
        tmp.write_text(json.dumps(record, sort_keys=True), "utf-8")
        os.replace(tmp, self.dir / RECORD)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(trash, ignore_errors=True)

    def _clean_leftovers(self) -> None:
        """Staging and trash folders of a sync that was killed half-way."""
        for path in self.dir.iterdir():
            if path.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(path, ignore_errors=True)

    # ---- background polling -------------------------------------------------------

    def start(self, interval: float) -> None:
        """Sync now, then every ``interval`` seconds (never again if it is 0)."""
        if self._task is None:
            self._task = asyncio.create_task(self._poll(interval))

    async def _poll(self, interval: float) -> None:
        while True:
            with contextlib.suppress(Exception):  # sync() logged it; the next poll retries
                await self.sync()
            if interval <= 0:
                return
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
