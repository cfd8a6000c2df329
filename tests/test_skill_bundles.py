"""Skill bundles, who may do what with a skill, fork lineage and the marketplace
listing, against the real stack (hub, service, PostgreSQL, LocalStore) through the
service's public API only."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import HubApi, PeakMemory, greeting_skill, service_pid

from jupyter_sac.rules.skills import (
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_ENTRIES,
    MAX_BUNDLE_FILE_BYTES,
    MAX_BUNDLE_FILES,
    MAX_BUNDLE_HEADER_BYTES,
    MAX_COMPRESSION_RATIO,
    MAX_EXTENDED_HEADERS,
)

pytestmark = pytest.mark.stack

FILES = {
    "templates/report.md": b"# Report\n\n{{table}}\n",
    "data/ref.csv": b"a,b\n1,2\n3,4\n",
    "bin/profile.py": b"print('profile')\n",
}


def _create(client: HubApi, command: str, **extra: Any) -> dict[str, Any]:
    resp = client.sac("POST", "skills", json=greeting_skill(command, **extra))
    assert resp.status_code == 201, resp.text
    return resp.json()


def _get(client: HubApi, skill_id: int) -> dict[str, Any]:
    resp = client.sac("GET", f"skills/{skill_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def _put_bundle(client: HubApi, skill_id: int, data: Any) -> httpx.Response:
    return client.sac("PUT", f"skills/{skill_id}/bundle", content=data)


def _new_agent(client: HubApi) -> str:
    slug = f"a{uuid.uuid4().hex[:8]}"
    resp = client.sac("POST", "agents", json={"slug": slug})
    assert resp.status_code == 201, resp.text
    return slug


def _join(admin: HubApi, group: str, *users: str) -> None:
    assert admin.hub("POST", f"groups/{group}").status_code in (201, 409)
    resp = admin.hub("POST", f"groups/{group}/users", json={"users": list(users)})
    assert resp.status_code == 200, resp.text


def _objects(stack: dict) -> set[str]:
    """Every file in the LocalStore (objects and their .sha256 companions)."""
    root = Path(stack["data_dir"]) / "objects"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _bundle_object(sha256: str) -> str:
    return f"skill-bundles/{sha256}.tar.gz"


# ---- archives ---------------------------------------------------------------------


def _tar(files: dict[str, bytes], mode: str = "w:gz", fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tar_entry(name: str, kind: bytes, linkname: str = "") -> bytes:
    """A tar.gz holding one ordinary file and one special entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        ok = tarfile.TarInfo("README.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"hi"))
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        info.devmajor, info.devminor = 1, 3
        tar.addfile(info)
    return buf.getvalue()


def _zip(files: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if modes and name in modes:
                info.external_attr = modes[name] << 16
            archive.writestr(info, data)
    return buf.getvalue()


def _patch_zip(data: bytes, edits: list[tuple[bytes, int, int]]) -> bytes:
    """Set bytes in a zip's headers: (signature, offset into that header, value)."""
    out = bytearray(data)
    for signature, offset, value in edits:
        at = out.find(signature)
        assert at >= 0
        out[at + offset] = value
    return bytes(out)


LOCAL, CENTRAL = b"PK\x03\x04", b"PK\x01\x02"


def _damaged_zips() -> dict[str, bytes]:
    plain = _zip({"notes.txt": b"hello world " * 20})
    local_crc = plain[plain.find(LOCAL) + 14]
    central_crc = plain[plain.find(CENTRAL) + 16]
    local_flags = plain[plain.find(LOCAL) + 6]
    central_flags = plain[plain.find(CENTRAL) + 8]
    return {
        "a zip whose checksum is wrong": _patch_zip(
            plain, [(LOCAL, 14, local_crc ^ 0xFF), (CENTRAL, 16, central_crc ^ 0xFF)]
        ),
        "a zip whose two headers name different files": _patch_zip(plain, [(LOCAL, 30, ord("m"))]),
        "an encrypted zip": _patch_zip(
            plain, [(LOCAL, 6, local_flags | 1), (CENTRAL, 8, central_flags | 1)]
        ),
        "a zip with an unknown compression method": _patch_zip(
            plain, [(LOCAL, 8, 99), (CENTRAL, 10, 99)]
        ),
        "a zip flagged UTF-8 whose name is not": _patch_zip(
            plain, [(LOCAL, 7, 0x08), (CENTRAL, 9, 0x08), (LOCAL, 30, 0xFF), (CENTRAL, 46, 0xFF)]
        ),
    }


def _files_of(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore


# ---- 1. upload, download, replace, delete --------------------------------------------


def test_bundle_upload_download_replace_and_delete(stack: dict, new_user) -> None:
    _, user = new_user("bun")
    _, reader = new_user("rdr")
    skill = _create(user, "with-files")
    assert skill["bundle"] is None and skill["version"] == 1
    assert user.sac("GET", f"skills/{skill['id']}/bundle").status_code == 404

    put = _put_bundle(user, skill["id"], _tar(FILES))
    assert put.status_code == 200, put.text
    first = put.json()
    assert first["version"] == 2
    bundle = first["bundle"]
    assert bundle["files"] == [{"name": n, "size": len(FILES[n])} for n in sorted(FILES)]
    assert bundle["size"] == sum(map(len, FILES.values()))
    assert len(bundle["sha256"]) == 64 and _get(user, skill["id"])["bundle"] == bundle
    assert _bundle_object(bundle["sha256"]) in _objects(stack)

    got = user.sac("GET", f"skills/{skill['id']}/bundle")
    assert got.status_code == 200 and got.headers["content-type"] == "application/gzip"
    assert hashlib.sha256(got.content).hexdigest() == bundle["sha256"]
    assert _files_of(got.content) == FILES
    # Private: nobody else can download it.
    assert reader.sac("GET", f"skills/{skill['id']}/bundle").status_code == 404

    # The same files again, as a tar.gz or a zip, are the same bundle: no new version.
    for same in (_tar(FILES), _zip(FILES), _tar(dict(reversed(FILES.items())), mode="w")):
        again = _put_bundle(user, skill["id"], same)
        assert again.status_code == 200, again.text
        assert again.json()["version"] == 2 and again.json()["bundle"] == bundle

    # A zip with other files replaces it; the unused old object leaves the store.
    notes = {"notes/readme.txt": b"read me\n", "notes/données-résumé.md": "é日本🙂".encode()}
    put = _put_bundle(user, skill["id"], _zip(notes))
    assert put.status_code == 200, put.text
    second = put.json()
    assert second["version"] == 3 and second["bundle"]["sha256"] != bundle["sha256"]
    assert [f["name"] for f in second["bundle"]["files"]] == sorted(notes)
    got = user.sac("GET", f"skills/{skill['id']}/bundle")
    assert hashlib.sha256(got.content).hexdigest() == second["bundle"]["sha256"]
    assert _files_of(got.content) == notes
    assert _bundle_object(bundle["sha256"]) not in _objects(stack)

    # Bundles are not held to the 1 MiB JSON body limit: a few MiB go through.
    big = {"data/sample.bin": os.urandom(3 * 1024 * 1024), **FILES}
    put = _put_bundle(user, skill["id"], _tar(big))
    assert put.status_code == 200, put.text
    third = put.json()
    assert third["version"] == 4 and third["bundle"]["size"] == sum(map(len, big.values()))
    got = user.sac("GET", f"skills/{skill['id']}/bundle")
    assert hashlib.sha256(got.content).hexdigest() == third["bundle"]["sha256"]

    # Once public, others may download it (but not change it).
    made_public = user.sac("PATCH", f"skills/{skill['id']}", json={"visibility": "public"})
    assert made_public.status_code == 200 and made_public.json()["version"] == 4
    got = reader.sac("GET", f"skills/{skill['id']}/bundle")
    assert hashlib.sha256(got.content).hexdigest() == third["bundle"]["sha256"]

    # DELETE removes it: a new version, no bundle, nothing to download, object gone.
    gone = user.sac("DELETE", f"skills/{skill['id']}/bundle")
    assert gone.status_code == 200, gone.text
    assert gone.json()["version"] == 5 and gone.json()["bundle"] is None
    missing = user.sac("GET", f"skills/{skill['id']}/bundle")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert _bundle_object(third["bundle"]["sha256"]) not in _objects(stack)
    again = user.sac("DELETE", f"skills/{skill['id']}/bundle")
    assert again.status_code == 200 and again.json()["version"] == 5
    empty = _put_bundle(user, skill["id"], _tar({}))
    assert empty.status_code == 400 and empty.json()["field"] == "bundle", empty.text
    assert _get(user, skill["id"])["version"] == 5


# ---- 2. hostile and broken uploads --------------------------------------------------


def _attacks() -> Iterator[tuple[str, bytes, str]]:
    """(what, body, text the error message must hold) — each refused with a 400."""
    yield "tar-slip", _tar({"ok.txt": b"x", "../evil.sh": b"rm -rf ~"}), "'../evil.sh'"
    yield "tar-slip inside a folder", _tar({"docs/../../evil.sh": b"x"}), "'docs/../../evil.sh'"
    yield "zip-slip", _zip({"../evil.sh": b"rm -rf ~"}), "'../evil.sh'"
    yield "an absolute path", _tar({"/etc/passwd": b"root::0:0::/:/bin/sh\n"}), "'/etc/passwd'"
    yield "an absolute zip path", _zip({"/etc/passwd": b"x"}), "'/etc/passwd'"
    yield "a symlink", _tar_entry("link", tarfile.SYMTYPE, "/etc/passwd"), "'link'"
    yield "a zip symlink", _zip({"link": b"/etc/passwd"}, {"link": 0o120777}), "'link'"
    yield "a hard link", _tar_entry("hard", tarfile.LNKTYPE, "README.txt"), "'hard'"
    yield "a character device", _tar_entry("mem", tarfile.CHRTYPE), "'mem'"
    yield "a block device", _tar_entry("disk", tarfile.BLKTYPE), "'disk'"
    yield "a fifo", _tar_entry("pipe", tarfile.FIFOTYPE), "'pipe'"
    yield "a zip fifo", _zip({"pipe": b""}, {"pipe": 0o010644}), "'pipe'"
    yield "a second SKILL.md", _tar({"SKILL.md": b"---\nname: evil\n---\n"}), "'SKILL.md'"
    yield "the same file twice", _tar({"a/b.txt": b"1", "a//b.txt": b"2"}), "'a//b.txt'"
    # Random bytes in a plain tar: over the per-file limit, nowhere near the ratio.
    too_big = _tar({"big.bin": os.urandom(MAX_BUNDLE_FILE_BYTES + 1)}, mode="w")
    yield (
        "a file over the per-file limit",
        too_big,
        f"'big.bin': files are limited to {MAX_BUNDLE_FILE_BYTES}",
    )
    many = {f"f{i:03}.txt": f"{i}".encode() for i in range(MAX_BUNDLE_FILES + 1)}
    yield "too many files", _tar(many), f"'f{MAX_BUNDLE_FILES:03}.txt': bundles hold at most"
    # Zeros: far over the 100:1 ratio, well under the per-file and total limits.
    zeros = bytes(MAX_BUNDLE_FILE_BYTES // 2)
    yield (
        "a zip bomb",
        _zip({"readme.txt": b"x", "bomb.bin": zeros}),
        "'bomb.bin': compressed more than",
    )
    yield "a tar.gz bomb", _tar({"bomb.bin": zeros}), "compressed more than 100:1"
    yield "plain text", b"this is not an archive\n" * 50, "not a readable tar or zip archive"
    yield "gzip of no tar", gzip.compress(b"hello " * 500), "not a readable tar or zip archive"
    yield "a truncated tar.gz", _tar(FILES)[:60], "not a readable tar or zip archive"
    for what, body in _damaged_zips().items():
        yield what, body, "not a readable tar or zip archive"
    # Names that show as something else than they are, or cannot be shown at all.
    for name in ("invoice\u202etxt.sh", "\x1b[2Jclear.txt", "two\nlines.txt", "del\x7f.txt"):
        yield f"the file name {name!r}", _tar({"ok.txt": b"x", name: b"x"}), repr(name)
    raw = _tar({"bad\udcff.txt": b"x"}, fmt=tarfile.GNU_FORMAT)  # the name byte 0xff
    yield "a file name that is not UTF-8", raw, "'bad\\udcff.txt'"


def test_bundle_attacks_are_refused_and_change_nothing(stack: dict, new_user) -> None:
    _, owner = new_user("own")
    _, stranger = new_user("atk")
    skill = _create(owner, "target")
    public = _create(owner, "target-public", visibility="public")
    for target in (skill, public):
        assert _put_bundle(owner, target["id"], _tar(FILES)).status_code == 200
    before = {s["id"]: _get(owner, s["id"]) for s in (skill, public)}
    objects = _objects(stack)
    # The bombs are built to break the ratio rule, not the size rules.
    zeros = bytes(MAX_BUNDLE_FILE_BYTES // 2)
    assert len(gzip.compress(zeros)) * MAX_COMPRESSION_RATIO < len(zeros) < MAX_BUNDLE_FILE_BYTES

    def unchanged(what: str) -> None:
        for skill_id, was in before.items():
            now = _get(owner, skill_id)
            assert (now["version"], now["bundle"]) == (was["version"], was["bundle"]), what
        assert _objects(stack) == objects, f"{what}: the object store changed"

    failures = []
    for what, body, named in _attacks():
        resp = _put_bundle(owner, skill["id"], body)
        error = (
            resp.json()
            if resp.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        if not (
            resp.status_code == 400
            and error.get("error") == "invalid_bundle"
            and error.get("field") == "bundle"
            and named in error.get("message", "")
        ):
            failures.append(
                f"{what}: {resp.status_code} {resp.text[:300]!r} (want 400 naming {named!r})"
            )
        unchanged(what)
    assert not failures, "\n".join(failures)

    # Over the total upload limit, declared (Content-Length) or streamed (chunked): a
    # JSON 413 reaches the client, not the proxy's 503 for a connection cut mid-upload.
    over = bytes(MAX_BUNDLE_BYTES + 1)
    resp = _put_bundle(owner, skill["id"], over)
    assert resp.status_code == 413 and resp.json()["error"] == "too_large", resp.text
    unchanged("an upload over the limit")

    def chunked() -> Iterator[bytes]:
        step = 1024 * 1024
        for start in range(0, len(over), step):
            yield over[start : start + step]

    resp = _put_bundle(owner, skill["id"], chunked())
    assert resp.status_code == 413 and resp.json()["error"] == "too_large", resp.text
    unchanged("a chunked upload over the limit")
    empty = _put_bundle(owner, skill["id"], b"")
    assert empty.status_code == 400 and empty.json()["field"] == "bundle", empty.text
    unchanged("an empty body")

    # Another user's skill: invisible is 404, visible but not theirs is 403.
    for target, status in ((skill, 404), (public, 403)):
        for method in ("PUT", "DELETE"):
            resp = stranger.sac(
                method, f"skills/{target['id']}/bundle", content=_tar({"x.txt": b"x"})
            )
            assert resp.status_code == status, f"{method} {target['command']}: {resp.text}"
            assert resp.json()["error"] == ("not_found" if status == 404 else "forbidden")
        unchanged(f"another user's {target['command']}")

    # A zip name with a NUL in it is cut there (as zipfile reads it) and stored as
    # listed: what the owner is shown is what the sandbox gets.
    nul = _zip({"evil.shX.txt": b"x"}).replace(b"evil.shX.txt", b"evil.sh\x00.txt")
    resp = _put_bundle(owner, skill["id"], nul)
    assert resp.status_code == 200, resp.text
    assert [f["name"] for f in resp.json()["bundle"]["files"]] == ["evil.sh"]
    got = owner.sac("GET", f"skills/{skill['id']}/bundle")
    assert list(_files_of(got.content)) == ["evil.sh"]


# ---- 2b. archives that cost more to read than they weigh ------------------------------


def _repeated_tar_gz(unit: bytes, times: int) -> bytes:
    """A tar.gz of ``unit`` (whole 512-byte blocks: headers and what they carry)
    ``times`` over, then the end-of-archive blocks; compressed as it is built, so
    the test never holds the unpacked archive."""
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    parts, batch = [], 1000
    for done in range(0, times, batch):
        parts.append(gz.compress(unit * min(batch, times - done)))
    parts.append(gz.compress(bytes(1024)) + gz.flush())
    return b"".join(parts)


def _folder(fmt: int, name: str = "d", **pax: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.pax_headers = pax
    return info.tobuf(format=fmt)


def _bombs() -> Iterator[tuple[str, bytes, str]]:
    """(what, body, text the error message must hold): each a few MiB at most, each
    far more expensive to read than its size unless reading is bounded."""
    entries = f"at most {MAX_BUNDLE_ENTRIES} entries"
    # The review's finding: 300,000 folder headers (150 MB unpacked).
    yield "300,000 folders", _repeated_tar_gz(_folder(tarfile.USTAR_FORMAT), 300_000), entries
    # A pax header before each folder: the extended headers are entries too.
    pax = _folder(tarfile.PAX_FORMAT, comment="x")
    yield "150,000 pax headers", _repeated_tar_gz(pax, 150_000), entries
    # GNU long names: a header and a data block before each folder.
    long_name = _folder(tarfile.GNU_FORMAT, "d/" + "x" * 150)
    yield "100,000 GNU long names", _repeated_tar_gz(long_name, 100_000), entries
    # Global headers, each read before the next by tarfile (a chain, not entries).
    glob = tarfile.TarInfo.create_pax_global_header({"comment": "x"})
    yield (
        "100,000 global headers",
        _repeated_tar_gz(glob, 100_000),
        (f"more than {MAX_EXTENDED_HEADERS} extended headers in a row"),
    )
    # One pax header that says it carries 2 GiB: refused before a byte of it is read.
    huge = tarfile.TarInfo("././@PaxHeader")
    huge.type, huge.size = tarfile.XHDTYPE, 2 * 1024**3
    unit = huge.tobuf(format=tarfile.USTAR_FORMAT) + bytes(512)
    yield (
        "a 2 GiB pax header",
        _repeated_tar_gz(unit, 1000),
        (f"archive headers are limited to {MAX_BUNDLE_HEADER_BYTES} bytes"),
    )
    folders = io.BytesIO()
    with zipfile.ZipFile(folders, "w") as archive:
        for i in range(MAX_BUNDLE_ENTRIES + 1):
            archive.writestr(f"d{i}/", b"")
    yield f"a zip of {MAX_BUNDLE_ENTRIES + 1} folders", folders.getvalue(), entries
    # A central directory over the header limit (comments live only there).
    comments = io.BytesIO()
    with zipfile.ZipFile(comments, "w") as archive:
        for i in range(MAX_BUNDLE_HEADER_BYTES // 65535 + 1):
            info = zipfile.ZipInfo(f"f{i}.txt")
            info.comment = b"c" * 65535
            archive.writestr(info, b"x")
    yield (
        "a zip whose central directory is too big",
        comments.getvalue(),
        (f"archive headers are limited to {MAX_BUNDLE_HEADER_BYTES} bytes"),
    )


def test_archives_are_bounded_while_they_are_read(stack: dict, new_user) -> None:
    _, owner = new_user("bmb")
    skill = _create(owner, "bombs")
    assert _put_bundle(owner, skill["id"], _tar(FILES)).status_code == 200
    before = _get(owner, skill["id"])
    objects = _objects(stack)
    pid = service_pid(stack)
    failures = []
    for what, body, named in _bombs():
        assert len(body) < MAX_BUNDLE_BYTES, what
        with PeakMemory(pid) as peak:
            resp = _put_bundle(owner, skill["id"], body)
        error = resp.json() if resp.status_code == 400 else {}
        if error.get("error") != "invalid_bundle" or named not in error.get("message", ""):
            failures.append(f"{what}: {resp.status_code} {resp.text[:300]!r} (want {named!r})")
        # The archive itself is at most a few MiB; reading it must not cost much more
        # (unbounded, the 300,000 folders alone took the service up by 160 MiB).
        if peak.growth > 32:
            failures.append(f"{what}: the service's memory grew by {peak.growth} MiB")
        now = _get(owner, skill["id"])
        if (now["version"], now["bundle"]) != (before["version"], before["bundle"]):
            failures.append(f"{what}: the skill changed")
            before = now
        if _objects(stack) != objects:
            failures.append(f"{what}: the object store changed")
            objects = _objects(stack)
    assert not failures, "\n".join(failures)

    # Within the limits a bundle of several MiB, in a pax tar with a folder and an
    # extended header per entry (as Python and bsdtar write them), still goes in.
    files = {f"data/part{i}.bin": os.urandom(512 * 1024) for i in range(12)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo("data")
        folder.type, folder.mtime = tarfile.DIRTYPE, 1.5
        tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5  # a float mtime: a pax header each
            tar.addfile(info, io.BytesIO(data))
    put = _put_bundle(owner, skill["id"], buf.getvalue())
    assert put.status_code == 200, put.text
    assert put.json()["bundle"]["size"] == sum(map(len, files.values()))


# ---- 3. who may do what -------------------------------------------------------------

ACTORS = ("owner", "admin", "member", "other", "stranger")
# For each tier, per actor in ACTORS order: (read, install, update, delete) statuses.
# read covers GET skills/{id} and appearing in the listing; install is into the
# actor's own agent. Invisible answers 404, visible but not yours 403.
MINE = (200, 201, 200, 204)
READ_ONLY = (200, 201, 403, 403)
HIDDEN = (404, 404, 404, 404)
MATRIX: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    #            owner  admin  member     other      stranger
    "official": (MINE, MINE, READ_ONLY, READ_ONLY, READ_ONLY),
    "public": (MINE, MINE, READ_ONLY, READ_ONLY, READ_ONLY),
    "group": (MINE, MINE, READ_ONLY, HIDDEN, HIDDEN),
    "private": (MINE, MINE, HIDDEN, HIDDEN, HIDDEN),
}


def test_visibility_matrix(admin: HubApi, new_user) -> None:
    """owner: the skill's creator (for official skills an administrator, the curator);
    admin: the hub's admin; member: in the skill's group; other: in another group;
    stranger: in no group."""
    owner_name, owner = new_user("mxo")
    curator_name = f"mxc{uuid.uuid4().hex[:8]}"
    curator = admin.create_user(curator_name, admin=True)
    member_name, member = new_user("mxm")
    other_name, other = new_user("mxx")
    stranger_name, stranger = new_user("mxs")
    group, elsewhere = f"g{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    _join(admin, group, owner_name, member_name)
    _join(admin, elsewhere, other_name)
    users = {
        "owner": (owner_name, owner),
        "curator": (curator_name, curator),
        "admin": ("admin", admin),
        "member": (member_name, member),
        "other": (other_name, other),
        "stranger": (stranger_name, stranger),
    }
    agents = {who: _new_agent(client) for who, (_, client) in users.items()}
    marker = uuid.uuid4().hex[:12]
    failures: list[str] = []
    try:
        for tier, row in MATRIX.items():
            creator = "curator" if tier == "official" else "owner"
            extra = {"visibility": tier, "description": f"matrix {marker}"}
            if tier == "group":
                extra["group"] = group
            for actor, expected in zip(ACTORS, row, strict=True):
                who = creator if actor == "owner" else actor
                skill = _create(users[creator][1], f"mx-{tier}-{actor}", **extra)
                cell = Cell(tier, actor, users[who][1], users[creator][1], users[who][0])
                failures += cell.run(skill, agents[who], marker, expected)
    finally:
        admin.sac("DELETE", f"users/admin/agents/{agents['admin']}")
        leftovers = admin.sac("GET", "skills", params={"q": marker, "limit": "200"}).json()
        for skill in leftovers["skills"]:
            admin.sac("DELETE", f"skills/{skill['id']}")
    assert not failures, "cells that answered otherwise:\n" + "\n".join(failures)


class Cell:
    """One actor doing every action to one skill; failures name the cell."""

    def __init__(self, tier: str, actor: str, client: HubApi, creator: HubApi, name: str):
        self.where = f"{tier} skill x {actor}"
        self.client, self.creator, self.name = client, creator, name
        self.failures: list[str] = []

    def fail(self, what: str) -> None:
        self.failures.append(f"{self.where}: {what}")

    def check(self, action: str, resp: httpx.Response, want: int) -> None:
        if resp.status_code != want:
            self.fail(f"{action} answered {resp.status_code}, expected {want}: {resp.text[:200]}")
        elif want >= 400 and resp.json()["error"] != ("not_found" if want == 404 else "forbidden"):
            self.fail(f"{action} answered the error {resp.text[:200]}")

    def run(
        self, skill: dict[str, Any], slug: str, marker: str, expected: tuple[int, int, int, int]
    ) -> list[str]:
        want_read, want_install, want_update, want_delete = expected
        client, sid = self.client, skill["id"]

        self.check("read", client.sac("GET", f"skills/{sid}"), want_read)
        listed = client.sac("GET", "skills", params={"q": marker, "limit": "200"}).json()
        if (sid in {s["id"] for s in listed["skills"]}) != (want_read == 200):
            self.fail(f"listed is {want_read != 200}, expected {want_read == 200}")

        path = f"users/{self.name}/agents/{slug}/skills"
        self.check("install", client.sac("POST", path, json={"skill_id": sid}), want_install)
        installed = {s["id"] for s in client.sac("GET", path).json()["skills"]}
        if (sid in installed) != (want_install == 201):
            self.fail(f"installed is {sid in installed}, expected {want_install == 201}")

        title = f"changed by {self.where}"
        self.check(
            "update", client.sac("PATCH", f"skills/{sid}", json={"title": title}), want_update
        )
        now = self.creator.sac("GET", f"skills/{sid}").json()
        want = (2, title) if want_update == 200 else (1, skill["title"])
        if (now["version"], now["title"]) != want:
            self.fail(f"after update the skill is {(now['version'], now['title'])}, not {want}")

        self.check("delete", client.sac("DELETE", f"skills/{sid}"), want_delete)
        left = self.creator.sac("GET", f"skills/{sid}").status_code
        if left != (404 if want_delete == 204 else 200):
            self.fail(f"after delete the creator reads {left}")
        return self.failures


# ---- 4. forks -----------------------------------------------------------------------


def test_fork_lineage_bundles_and_parent_deletion(admin: HubApi, new_user) -> None:
    ann_name, ann = new_user("fka")
    bob_name, bob = new_user("fkb")
    carol_name, carol = new_user("fkc")
    dave_name, dave = new_user("fkd")
    _, eve = new_user("fke")
    group = f"g{uuid.uuid4().hex[:8]}"
    _join(admin, group, ann_name, dave_name)

    parent = _create(ann, "report", visibility="public")
    parent = _put_bundle(ann, parent["id"], _tar(FILES)).json()
    sha = parent["bundle"]["sha256"]

    fork = bob.sac("POST", f"skills/{parent['id']}/fork")
    assert fork.status_code == 201, fork.text
    fork = fork.json()
    assert (fork["owner"], fork["parent_id"], fork["visibility"], fork["group"]) == (
        bob_name,
        parent["id"],
        "private",
        None,
    )
    assert fork["version"] == 1 and fork["command"] == "report"
    assert fork["bundle"] == parent["bundle"]
    got = bob.sac("GET", f"skills/{fork['id']}/bundle")
    assert hashlib.sha256(got.content).hexdigest() == sha

    # Editing the fork (content and bundle) leaves the parent as it was.
    edited = bob.sac(
        "PATCH", f"skills/{fork['id']}", json={"title": "Bob's report", "visibility": "public"}
    )
    assert edited.status_code == 200 and edited.json()["version"] == 2, edited.text
    rebundled = _put_bundle(bob, fork["id"], _tar({"bob.txt": b"mine"}))
    assert rebundled.status_code == 200 and rebundled.json()["version"] == 3, rebundled.text
    assert _get(ann, parent["id"]) == parent
    got = ann.sac("GET", f"skills/{parent['id']}/bundle")
    assert hashlib.sha256(got.content).hexdigest() == sha

    # A fork of the fork: the chain runs grandchild -> fork -> parent.
    grandchild = carol.sac("POST", f"skills/{fork['id']}/fork", json={"command": "carols-report"})
    assert grandchild.status_code == 201, grandchild.text
    grandchild = grandchild.json()
    assert grandchild["parent_id"] == fork["id"] and grandchild["title"] == "Bob's report"
    assert grandchild["bundle"]["sha256"] == rebundled.json()["bundle"]["sha256"]
    assert _get(carol, grandchild["parent_id"])["parent_id"] == parent["id"]
    # A fork under a command one already has is a conflict; another command is fine.
    clash = bob.sac("POST", f"skills/{fork['id']}/fork")
    assert clash.status_code == 409 and clash.json()["field"] == "command", clash.text
    second = carol.sac("POST", f"skills/{parent['id']}/fork")
    assert second.status_code == 201 and second.json()["bundle"]["sha256"] == sha, second.text
    second = second.json()

    # Private skills of others cannot be forked (or seen); group skills by members only.
    private = _create(ann, "diary")
    assert bob.sac("POST", f"skills/{private['id']}/fork").status_code == 404
    assert bob.sac("POST", "skills/999999999/fork").status_code == 404
    shared = _create(ann, "team-report", visibility="group", group=group)
    assert eve.sac("POST", f"skills/{shared['id']}/fork").status_code == 404
    team_fork = dave.sac("POST", f"skills/{shared['id']}/fork")
    assert team_fork.status_code == 201, team_fork.text
    team_fork = team_fork.json()
    assert (team_fork["visibility"], team_fork["group"], team_fork["parent_id"]) == (
        "private",
        None,
        shared["id"],
    )
    assert ann.sac("GET", f"skills/{team_fork['id']}").status_code == 404

    # Deleting the parent: the forks live on, their parent_id cleared (no dangling
    # id), the grandchild still points at its own parent, shared bundles survive.
    assert ann.sac("DELETE", f"skills/{parent['id']}").status_code == 204
    assert bob.sac("GET", f"skills/{parent['id']}").status_code == 404
    orphan = _get(bob, fork["id"])
    assert orphan["parent_id"] is None and orphan["version"] == 3
    assert _get(carol, grandchild["id"])["parent_id"] == fork["id"]
    kept = _get(carol, second["id"])
    assert kept["parent_id"] is None and kept["bundle"]["sha256"] == sha
    got = carol.sac("GET", f"skills/{second['id']}/bundle")
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha
    slug = _new_agent(carol)
    installed = carol.sac(
        "POST", f"users/{carol_name}/agents/{slug}/skills", json={"skill_id": second["id"]}
    )
    assert installed.status_code == 201, installed.text
    edited = carol.sac("PATCH", f"skills/{second['id']}", json={"title": "Still mine"})
    assert edited.status_code == 200 and edited.json()["version"] == 2, edited.text
    refork = bob.sac("POST", f"skills/{fork['id']}/fork", json={"command": "report-again"})
    assert refork.status_code == 201 and refork.json()["parent_id"] == fork["id"], refork.text


# ---- 5. listing ---------------------------------------------------------------------


def _list(client: HubApi, **params: str) -> dict[str, Any]:
    resp = client.sac("GET", "skills", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _commands(client: HubApi, **params: str) -> list[str]:
    return [s["command"] for s in _list(client, limit="200", **params)["skills"]]


def test_list_search_filters_paging_and_order(admin: HubApi, new_user) -> None:
    ann_name, ann = new_user("lsa")
    bob_name, bob = new_user("lsb")
    group = f"g{uuid.uuid4().hex[:8]}"
    _join(admin, group, ann_name)
    m = uuid.uuid4().hex[:10]

    def make(client: HubApi, name: str, **extra: Any) -> dict[str, Any]:
        return _create(client, f"{name}-{m}", description=f"Skill {name} of run {m}.", **extra)

    alpha = make(ann, "alpha", visibility="public", title="Plot a histogram")
    beta = make(ann, "beta", visibility="public")
    gamma = make(ann, "gamma", visibility="group", group=group)
    make(ann, "delta")
    make(bob, "epsilon", visibility="public")
    make(bob, "zeta")
    official = make(admin, "eta", visibility="official")

    def a(*names: str) -> list[str]:
        return [f"{n}-{m}" for n in names]

    try:
        # Text search: words of the command, title or description, any case;
        # visibility applies. LIKE's % and _ are punctuation, as any other
        # (docs/skills.md#search).
        assert sorted(_commands(ann, q=m)) == a("alpha", "beta", "delta", "epsilon", "eta", "gamma")
        assert sorted(_commands(bob, q=m.upper())) == a("alpha", "beta", "epsilon", "eta", "zeta")
        assert _commands(bob, q="HISTOGRAM", owner=ann_name) == a("alpha")
        assert _commands(ann, q=f"gamma of run {m}") == a("gamma")
        assert (
            sorted(_commands(ann, q=f"{m}%"))
            == sorted(_commands(ann, q=f"_{m}"))
            == a("alpha", "beta", "delta", "epsilon", "eta", "gamma")
        )

        # Filters.
        assert _commands(ann, q=m, tier="group") == a("gamma")
        assert _commands(bob, q=m, tier="group") == []
        assert _commands(ann, q=m, tier="private") == a("delta")
        assert _commands(bob, q=m, tier="private") == a("zeta")
        assert _commands(bob, q=m, tier="official") == a("eta")
        assert sorted(_commands(bob, q=m, owner=ann_name)) == a("alpha", "beta")
        assert sorted(_commands(ann, q=m, owner=ann_name)) == a("alpha", "beta", "delta", "gamma")
        assert _commands(ann, q=m, owner=bob_name) == a("epsilon")
        assert _commands(ann, q=m, group=group) == a("gamma")
        assert _commands(bob, q=m, group=group) == []
        assert _commands(admin, q=m, group=group) == a("gamma")
        assert sorted(_commands(admin, q=m, tier="private")) == a("delta", "zeta")
        for bad, field in [
            ({"tier": "secret"}, "tier"),
            ({"limit": "0"}, "limit"),
            ({"limit": "201"}, "limit"),
            ({"limit": "ten"}, "limit"),
            ({"cursor": "-1"}, "cursor"),
            ({"cursor": "x"}, "cursor"),
            ({"q": "x" * 201}, "q"),
        ]:
            resp = ann.sac("GET", "skills", params=bad)
            assert resp.status_code == 400 and resp.json()["field"] == field, (bad, resp.text)

        # Order: most installed first, then most recently changed.
        agents = [_new_agent(ann), _new_agent(ann)]
        bob_agent = _new_agent(bob)
        installs = [(ann_name, s, beta) for s in agents] + [(bob_name, bob_agent, beta)]
        installs += [(ann_name, agents[0], alpha)]
        for user, slug, skill in installs:
            client = ann if user == ann_name else bob
            resp = client.sac(
                "POST", f"users/{user}/agents/{slug}/skills", json={"skill_id": skill["id"]}
            )
            assert resp.status_code == 201, resp.text
        changed = ann.sac("PATCH", f"skills/{gamma['id']}", json={"title": "Gamma, revised"})
        assert changed.status_code == 200, changed.text
        listed = _list(ann, q=m, limit="200")["skills"]
        assert [s["command"] for s in listed] == a(
            "beta", "alpha", "gamma", "eta", "epsilon", "delta"
        )
        assert [s["installs"] for s in listed][:3] == [3, 1, 0]

        # Uninstalls count down; a tie is broken by recency.
        for slug in agents:
            ann.sac("DELETE", f"users/{ann_name}/agents/{slug}/skills/{beta['id']}")
        assert _get(ann, beta["id"])["installs"] == 1
        assert _commands(ann, q=m)[:2] == a("beta", "alpha")
        assert (
            ann.sac("PATCH", f"skills/{alpha['id']}", json={"title": "Plot it"}).status_code == 200
        )
        assert _commands(ann, q=m)[:3] == a("alpha", "beta", "gamma")
        # A PATCH that changes nothing is no change: beta does not move ahead.
        same = ann.sac("PATCH", f"skills/{beta['id']}", json={"title": beta["title"]})
        assert same.status_code == 200 and same.json()["version"] == beta["version"]
        assert _commands(ann, q=m)[:2] == a("alpha", "beta")

        # Paging: limit and the opaque next_cursor walk the same order without gaps.
        full = _commands(ann, q=m)
        pages, cursor = [], None
        while True:
            params = {"q": m, "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = _list(ann, **params)
            pages.append([s["command"] for s in page["skills"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [c for p in pages for c in p] == full
        assert [len(p) for p in pages] == [2, 2, 2]
        assert _list(ann, q=m, limit="6")["next_cursor"] is None
        assert _list(ann, q=m, limit="5")["next_cursor"] is not None
        assert _list(ann, q=m, cursor="100")["skills"] == []
    finally:
        admin.sac("DELETE", f"skills/{official['id']}")
