"""Workspace path rules, object keys, what is not synced, conflict names."""

from __future__ import annotations

from datetime import datetime

import pytest

from jupyter_sac.rules.workspace import (
    PathError,
    clean_relative,
    conflict_name,
    ignored,
    locate,
    object_key,
)
from jupyter_sac.server_extension.workspace_handlers import preview_kind


def test_workspace_paths_map_to_spaces() -> None:
    assert locate("private/notes/a.md", 7).space == "agent:7"
    assert locate("private/notes/a.md", 7).path == "private/notes/a.md"
    out = locate("output/plot.png", 7)
    assert (out.area, out.space, out.path) == ("output", "agent:7", "output/plot.png")
    pub = locate("public/handbook.md", 7)
    assert (pub.space, pub.path, pub.workspace_path) == (
        "public",
        "handbook.md",
        "public/handbook.md",
    )
    grp = locate("group/data team/q3 ✓.csv", 7)
    assert (grp.space, grp.path, grp.group) == ("group:data team", "q3 ✓.csv", "data team")
    assert grp.workspace_path == "group/data team/q3 ✓.csv"


@pytest.mark.parametrize(
    "bad",
    [
        "", "/etc/passwd", "private/../../etc/passwd", "private/./a", "private//a",
        "private/a\x00b", "private/a\nb", "private\\a", "private/", "private",
        "elsewhere/a", "group/", "group/g", "group//a", "public/",
        "private/" + "x" * 256, "private/" + "é" * 128, "p/" * 600,
    ],
)  # fmt: skip
def test_bad_paths_are_refused(bad: str) -> None:
    with pytest.raises(PathError):
        locate(bad, 1)


def test_names_are_normalised_to_nfc_and_long_names_fit() -> None:
    decomposed = "private/cafe\u0301.txt"
    assert clean_relative(decomposed) == "private/caf\u00e9.txt"
    assert locate("private/" + "x" * 255, 1).path.endswith("x" * 255)


def test_caches_and_temp_files_are_not_synced() -> None:
    for path in ("private/.ipynb_checkpoints/a.ipynb", "output/__pycache__/m.pyc",
                 "private/a.txt.sac-part", "private/.sac-x", "private/.a.swp", "private/a~"):  # fmt: skip
        assert ignored(path), path
    for path in ("private/a.txt", "private/.env", "output/report (1).pdf"):
        assert not ignored(path), path


def test_object_keys_are_content_addressed_per_space() -> None:
    sha = "ab" * 32
    assert object_key("agent:12", sha) == f"workspace/agents/12/{sha}"
    assert object_key("public", sha) == f"workspace/public/{sha}"
    one, other = object_key("group:a/b", sha), object_key("group:a b", sha)
    assert one.startswith("workspace/groups/") and one != other and "/b/" not in one


def test_conflict_names_keep_the_extension() -> None:
    when = datetime(2026, 11, 22, 10, 31, 5)
    assert conflict_name("group/g/report.csv", "ann/desk", when) == (
        "group/g/report (conflict, ann-desk, 2026-11-22 10.31.05).csv"
    )
    assert conflict_name("private/.env", "ann/desk", when) == (
        "private/.env (conflict, ann-desk, 2026-11-22 10.31.05)"
    )


def test_preview_kinds() -> None:
    assert preview_kind("a.png", b"\x89PNG\r\n") == "image"
    assert preview_kind("a.txt", "héllo".encode()) == "text"
    assert preview_kind("a.csv", "é".encode()[:1]) == "text"  # a character cut at the end
    assert preview_kind("a.bin", b"\x00\x01\x02") == "binary"
    assert preview_kind("a.dat", b"\xff\xfe\xfd" * 100) == "binary"


def test_batch_reads_group_small_objects_and_stream_big_ones_alone() -> None:
    from jupyter_sac.service.workspace import READ_GROUP_BYTES, SMALL_OBJECT_BYTES, read_groups

    big = SMALL_OBJECT_BYTES + 1
    plan = [("a", 10), ("b", 20), ("c", big), ("d", 5), *[(f"s{i}", 1 << 20) for i in range(5)]]
    groups = read_groups(plan)
    assert [[k for k, _ in g] for g in groups] == [
        ["a", "b"], ["c"], ["d", "s0", "s1", "s2"], ["s3", "s4"],
    ]  # fmt: skip
    assert all(sum(s for _, s in g) <= READ_GROUP_BYTES for g in groups if len(g) > 1)
    assert [k for g in groups for k, _ in g] == [k for k, _ in plan]  # order kept
    assert read_groups([]) == []


def test_batch_writer_cuts_a_stream_into_files_whatever_the_chunking(tmp_path) -> None:
    import hashlib

    from jupyter_sac.server_extension.workspace_sync import _BatchWriter

    contents = {"private/a.txt": b"alpha", "private/empty": b"", "output/x/b.bin": b"\x00" * 3000,
                "private/last-empty": b""}  # fmt: skip
    entries = [{"path": p, "size": len(d)} for p, d in contents.items()]
    stream = b"".join(contents.values())
    for cut in (1, 7, 1000, len(stream)):
        root = tmp_path / f"cut{cut}"
        writer = _BatchWriter(root, entries)
        done = []
        for i in range(0, len(stream), cut):
            done += writer.feed(stream[i : i + cut])
        done += writer.feed(b"")
        assert writer.finished
        assert [e["path"] for e, *_ in done] == list(contents)
        for entry, part, local, sha in done:
            assert part.read_bytes() == contents[entry["path"]]
            assert sha == hashlib.sha256(contents[entry["path"]]).hexdigest()
            assert local == root / entry["path"]
    short = _BatchWriter(tmp_path / "short", entries)
    short.feed(stream[:-1])
    assert not short.finished
    short.close()
    extra = _BatchWriter(tmp_path / "extra", entries)
    with pytest.raises(OSError, match="more bytes"):
        extra.feed(stream + b"!")
    extra.close()
