"""Skill rules (pure): the shipped official skills, parameters and their values,
rendering, and bundle checks against real tar and zip archives."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from jupyter_sac.skills import (
    BundleEntry,
    SkillError,
    build_spec,
    check_bundle,
    command_markdown,
    load_official_skills,
    render_prompt,
    skill_markdown,
    split_front_matter,
    tar_entries,
    validate_values,
    zip_entries,
)

SKILLS = Path(__file__).parent.parent / "skills"


def test_the_official_skills_load_and_render() -> None:
    specs = {s.command: s for s in load_official_skills(SKILLS)}
    assert len(specs) >= 6
    assert {"explain-notebook", "test-module", "summarise-csv", "review-diff", "draft-sql",
            "notebook-to-script"} <= set(specs)  # fmt: skip
    for spec in specs.values():
        front, body = split_front_matter(skill_markdown(spec))
        assert front == {"name": spec.command, "description": spec.description}
        assert len(body) > 300, f"{spec.command}: the SKILL.md says what to do"
        command_front, _ = split_front_matter(command_markdown(spec))
        assert command_front["description"] == spec.description
        required = {p.name: "x" for p in spec.parameters if p.required}
        values = validate_values(spec.parameters, {k: _example(spec, k) for k in required})
        assert "{{" not in render_prompt(spec, values)


def _example(spec, name: str) -> object:
    param = next(p for p in spec.parameters if p.name == name)
    return {"text": "data/sales.csv", "number": 3, "date": "2026-01-31"}.get(
        param.type, param.options[0] if param.options else "x"
    )


META = {
    "command": "plot-it",
    "title": "Plot it",
    "description": "Plot a column.",
    "parameters": [
        {"name": "file", "type": "text", "required": True},
        {"name": "bins", "type": "number", "default": 10, "min": 1, "max": 100},
        {"name": "since", "type": "date"},
        {"name": "style", "type": "select", "options": ["bar", "line"], "default": "bar"},
    ],
    "prompt": "Plot {{file}} as a {{style}} chart with {{bins}} bins since {{since}}.",
}
BODY = "---\nname: plot-it\ndescription: Plot a column.\n---\n\nDo the plot.\n"


def test_values_are_typed_defaulted_and_rendered() -> None:
    spec = build_spec(META, BODY)
    values = validate_values(
        spec.parameters, {"file": "a.csv", "bins": "25", "since": "2026-02-01"}
    )
    assert values == {"file": "a.csv", "bins": 25, "since": "2026-02-01", "style": "bar"}
    assert render_prompt(spec, values) == "Plot a.csv as a bar chart with 25 bins since 2026-02-01."
    md = command_markdown(spec)
    assert md.endswith("Plot $1 as a $4 chart with $2 bins since $3.\n")
    assert yaml.safe_load(md.split("---")[1])["argument-hint"] == "<file> [bins] [since] [style]"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({}, "values.file"),
        ({"file": "a", "since": "31/01/2026"}, "values.since"),
        ({"file": "a", "since": "2026-02-30"}, "values.since"),
        ({"file": "a", "style": "pie"}, "values.style"),
        ({"file": "a", "bins": 0}, "values.bins"),
        ({"file": "a", "bins": "many"}, "values.bins"),
        ({"file": "a", "bins": True}, "values.bins"),
        ({"file": "a", "colour": "red"}, "values.colour"),
        ({"file": "x" * 10_001}, "values.file"),
        ({"file": "a\x00b"}, "values.file"),
        ("file=a", "values"),
    ],
)
def test_bad_values_name_the_parameter(values: object, field: str) -> None:
    spec = build_spec(META, BODY)
    with pytest.raises(SkillError) as info:
        validate_values(spec.parameters, values)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"command": "Plot_It"}, "command"),
        ({"command": "plot--it"}, "command"),
        ({"title": ""}, "title"),
        ({"parameters": [{"name": "x", "type": "colour"}]}, "parameters[0].type"),
        ({"parameters": [{"name": "x", "type": "select"}]}, "parameters[0].options"),
        ({"parameters": [{"name": "x", "type": "select", "options": ["a", "a"]}]},
         "parameters[0].options"),
        ({"parameters": [{"name": "x", "type": "number", "default": 5, "max": 3}]},
         "parameters[0].default"),
        ({"parameters": [{"name": "x"}, {"name": "x"}]}, "parameters"),
        ({"parameters": [{"name": "1x"}]}, "parameters[0].name"),
        ({"prompt": "Use {{nothing}}"}, "prompt"),
        ({"owner": "me"}, "owner"),
    ],
)  # fmt: skip
def test_bad_skills_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(SkillError) as info:
        build_spec({**META, **change}, BODY)
    assert info.value.field == field


def _tar(*members: tarfile.TarInfo, data: bytes = b"x") -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    buf.seek(0)
    return buf


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = 1 if kind == tarfile.REGTYPE else 0
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        (_member("../../etc/cron.d/x"), "'..'"),
        (_member("/etc/passwd"), "absolute"),
        (_member("data/link", tarfile.SYMTYPE, "/etc/shadow"), "symlink"),
        (_member("data/hard", tarfile.LNKTYPE, "data/a"), "hardlink"),
        (_member("dev", tarfile.CHRTYPE), "device"),
        (_member("SKILL.md"), "duplicate"),
    ],
)
def test_tar_attacks_are_refused_naming_the_entry(member: tarfile.TarInfo, problem: str) -> None:
    entries = tar_entries(_tar(_member("data/ok.csv"), member))
    with pytest.raises(SkillError) as info:
        check_bundle(entries)
    assert member.name in info.value.field and problem in str(info.value)


def test_a_clean_bundle_passes_and_limits_hold() -> None:
    good = tar_entries(
        _tar(_member("data", tarfile.DIRTYPE), _member("data/a.csv"), _member("tpl/r.md"))
    )
    assert [e.name for e in check_bundle(good)] == ["data/a.csv", "tpl/r.md"]
    with pytest.raises(SkillError, match="limited"):
        check_bundle([BundleEntry("big.bin", "file", 21 * 1024 * 1024)])
    with pytest.raises(SkillError, match="at most 200 files"):
        check_bundle([BundleEntry(f"f{i}", "file", 1) for i in range(201)])


def test_zip_bomb_and_zip_symlink_are_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * (5 * 1024 * 1024))
    buf.seek(0)
    with pytest.raises(SkillError, match="bomb"):
        check_bundle(zip_entries(buf))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        link = zipfile.ZipInfo("link")
        link.external_attr = 0o120777 << 16
        z.writestr(link, "/etc/passwd")
    buf.seek(0)
    with pytest.raises(SkillError, match="symlink"):
        check_bundle(zip_entries(buf))


def _row(owner: str, visibility: str, group: str | None = None) -> dict:
    return {"owner": owner, "visibility": visibility, "group_name": group}


@pytest.mark.parametrize(
    ("row", "reader", "readable"),
    [
        (_row("ann", "private"), "ann", True),
        (_row("ann", "private"), "bob", False),
        (_row("ann", "public"), "bob", True),
        (_row("", "official"), "bob", True),
        (_row("ann", "group", "lab"), "cat", True),  # cat is in "lab"
        (_row("ann", "group", "lab"), "bob", False),
    ],
)
def test_who_reads_what(row: dict, reader: str, readable: bool) -> None:
    from jupyter_sac.skills import Viewer, can_read

    groups = ("lab",) if reader == "cat" else ()
    assert can_read(row, Viewer(reader, groups=groups)) is readable
    assert can_read(row, Viewer("root", admin=True)) is True


def test_who_edits_and_publishes_what() -> None:
    from jupyter_sac.skills import OFFICIAL_SCOPE, Viewer, can_edit, check_tier

    curator = Viewer("cur", scopes=frozenset({OFFICIAL_SCOPE}))
    assert can_edit(_row("", "official"), curator)
    assert not can_edit(_row("", "official"), Viewer("bob"))
    assert not can_edit(_row("ann", "public"), Viewer("bob"))
    assert can_edit(_row("ann", "public"), Viewer("ann"))
    assert check_tier(curator, "official", None) == ("official", None)
    assert check_tier(Viewer("cat", groups=("lab",)), "group", "lab") == ("group", "lab")
    for viewer, tier, group, field in [
        (Viewer("bob"), "official", None, "visibility"),
        (Viewer("bob"), "group", "lab", "group"),
        (Viewer("bob"), "group", None, "group"),
        (Viewer("bob"), "private", "lab", "group"),
        (Viewer("bob"), "everyone", None, "visibility"),
    ]:
        with pytest.raises(SkillError) as info:
            check_tier(viewer, tier, group)
        assert info.value.field == field
