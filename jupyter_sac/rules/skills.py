"""Skill rules (pure): the skill model, typed parameters, rendering, bundle checks.

A skill is a ``SKILL.md`` in Claude Code's skill format plus metadata
(``skill.yaml`` for the official skills shipped in ``skills/``): a kebab-case
command, title, description, typed parameters and a prompt template whose
``{{name}}`` placeholders take the parameter values. Installed into an agent it
becomes ``skills/<command>/SKILL.md`` (plus its attachment files), which Claude
Code offers both to the model (by its description) and to the user as the slash
command ``/<command>``. Run with values, the template renders the arguments of
that slash command, which Claude Code puts in place of ``$ARGUMENTS``.

Why no ``commands/<command>.md`` as well: with the pinned CLI a skill shadows a
command of the same name (``/<command>`` always runs the skill, the command file
is never read), so the parameter template lives in the skill itself.

No I/O here except ``load_skill_dir``/``load_official_skills`` (reading a folder)
and the archive readers, which only list entries.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath
from typing import IO, Any, Self

import yaml

from .archives import (
    ArchiveEntry,
    ArchiveError,
    ArchiveLimits,
    check_entries,
    open_zip,
    zip_entry,
)

# libyaml's safe loader and dumper when PyYAML has them: the pure-Python ones made
# rendering 200 skills' front matter half of a cold sync's CPU time.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

COMMAND_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
PARAM_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
PLACEHOLDER_RE = re.compile(r"\{\{\s*([a-z][a-z0-9_]*)\s*\}\}")
PARAM_TYPES = ("text", "number", "date", "select")
MAX_COMMAND = 64
MAX_TITLE = 120
MAX_DESCRIPTION = 1000
MAX_BODY = 200_000
MAX_PARAMS = 20
MAX_OPTIONS = 50
MAX_TEXT_VALUE = 10_000
MAX_TEMPLATE = 20_000

# Bundles: what a skill may carry besides SKILL.md.
MAX_BUNDLE_FILES = 200
MAX_BUNDLE_FILE_BYTES = 20 * 1024 * 1024
MAX_BUNDLE_BYTES = 50 * 1024 * 1024
MAX_COMPRESSION_RATIO = 100  # more than this is treated as a decompression bomb
MAX_PATH_LENGTH = 255
# What reading an archive may cost, bounded while it is read: every entry counts
# (files, folders, links, and a tar's pax, GNU long-name and global headers, which
# tarfile reads as headers of their own), and so do the bytes of all headers (a
# tar's header blocks and what extended headers carry, a zip's central directory).
MAX_BUNDLE_ENTRIES = 2000
MAX_BUNDLE_HEADER_BYTES = 4 * 1024 * 1024
MAX_EXTENDED_HEADERS = 16  # pax/GNU headers in a row before the entry they describe
# All the unpacked bytes of a tar: the files, their headers, and the padding of
# each to 512-byte blocks plus the end-of-archive blocks (well under 1 MiB).
MAX_BUNDLE_UNPACKED_BYTES = MAX_BUNDLE_BYTES + MAX_BUNDLE_HEADER_BYTES + 1024 * 1024


class SkillError(ValueError):
    """Bad skill input; ``field`` names what is wrong (``parameters[2].options``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    required: bool = False
    default: Any = None
    help: str = ""
    options: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        for key in ("default", "help", "min", "max"):
            value = getattr(self, key)
            if value not in (None, ""):
                out[key] = value
        if self.type == "select":
            out["options"] = list(self.options)
        return out


@dataclass(frozen=True)
class SkillSpec:
    command: str
    title: str
    description: str
    body: str
    parameters: tuple[Parameter, ...] = ()
    prompt: str = ""
    tags: tuple[str, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)


# ---- validation -------------------------------------------------------------------


def _text(field: str, value: Any, max_len: int, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise SkillError(field, "expected text")
    if len(value) > max_len or "\x00" in value:
        raise SkillError(field, f"at most {max_len} characters")
    return value.strip()


def valid_command(value: Any, field: str = "command") -> str:
    if not isinstance(value, str) or not COMMAND_RE.match(value) or len(value) > MAX_COMMAND:
        raise SkillError(field, "use kebab-case: lowercase letters and digits in words joined by -")
    return value


def _number(field: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SkillError(field, "expected a number")
    if value != value or value in (float("inf"), float("-inf")):
        raise SkillError(field, "expected a finite number")
    return value


def parse_parameter(raw: Any, field: str) -> Parameter:
    if not isinstance(raw, dict):
        raise SkillError(field, "expected an object with name and type")
    unknown = set(raw) - {"name", "type", "required", "default", "help", "options", "min", "max"}
    if unknown:
        raise SkillError(f"{field}.{sorted(unknown)[0]}", "unknown field")
    name = raw.get("name")
    if not isinstance(name, str) or not PARAM_NAME_RE.match(name):
        raise SkillError(f"{field}.name", "1-40 of a-z, 0-9 and _, starting with a letter")
    kind = raw.get("type", "text")
    if kind not in PARAM_TYPES:
        raise SkillError(f"{field}.type", f"one of {', '.join(PARAM_TYPES)}")
    required = raw.get("required", False)
    if not isinstance(required, bool):
        raise SkillError(f"{field}.required", "expected true or false")
    options: tuple[str, ...] = ()
    if kind == "select":
        opts = raw.get("options")
        if not isinstance(opts, list) or not opts or len(opts) > MAX_OPTIONS:
            raise SkillError(f"{field}.options", f"a select needs 1-{MAX_OPTIONS} options")
        options = tuple(_text(f"{field}.options[{i}]", o, 200) for i, o in enumerate(opts))
        if len(set(options)) != len(options):
            raise SkillError(f"{field}.options", "options must be different")
    elif "options" in raw:
        raise SkillError(f"{field}.options", "only select parameters have options")
    low = _number(f"{field}.min", raw["min"]) if raw.get("min") is not None else None
    high = _number(f"{field}.max", raw["max"]) if raw.get("max") is not None else None
    if (low is not None or high is not None) and kind != "number":
        raise SkillError(f"{field}.min", "only number parameters have min and max")
    if low is not None and high is not None and low > high:
        raise SkillError(f"{field}.min", "min is above max")
    param = Parameter(
        name=name,
        type=kind,
        required=required,
        help=_text(f"{field}.help", raw.get("help"), 500, required=False),
        options=options,
        min=low,
        max=high,
    )
    default = raw.get("default")
    if default is not None:
        if isinstance(default, date):  # YAML reads 2026-01-31 as a date
            default = default.isoformat()
        default = coerce_value(param, default, f"{field}.default")
        param = Parameter(**{**param.__dict__, "default": default})
    return param


def parse_parameters(raw: Any) -> tuple[Parameter, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_PARAMS:
        raise SkillError("parameters", f"expected a list of at most {MAX_PARAMS} parameters")
    params = tuple(parse_parameter(p, f"parameters[{i}]") for i, p in enumerate(raw))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise SkillError("parameters", "parameter names must be different")
    return params


def coerce_value(param: Parameter, value: Any, field: str) -> Any:
    """One parameter value, checked against its type (raises SkillError)."""
    if param.type == "text":
        if not isinstance(value, str):
            raise SkillError(field, "expected text")
        if len(value) > MAX_TEXT_VALUE or "\x00" in value:
            raise SkillError(field, f"at most {MAX_TEXT_VALUE} characters")
        return value
    if param.type == "number":
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                raise SkillError(field, "expected a number") from None
        number = _number(field, value)
        if param.min is not None and number < param.min:
            raise SkillError(field, f"at least {param.min:g}")
        if param.max is not None and number > param.max:
            raise SkillError(field, f"at most {param.max:g}")
        return number
    if param.type == "date":
        if not isinstance(value, str):
            raise SkillError(field, "expected a date like 2026-01-31")
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise SkillError(field, "expected a date like 2026-01-31") from None
    if value not in param.options:
        raise SkillError(field, f"one of {', '.join(param.options)}")
    return value


def validate_values(params: tuple[Parameter, ...], values: Any) -> dict[str, Any]:
    """Checked values for a run: defaults filled in, unknown names and missing
    required ones refused."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise SkillError("values", "expected an object of parameter values")
    known = {p.name for p in params}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SkillError(f"values.{unknown[0]}", "this skill has no such parameter")
    out: dict[str, Any] = {}
    for param in params:
        value = values.get(param.name)
        if value is None or value == "":
            if param.required and param.default is None:
                raise SkillError(f"values.{param.name}", "required")
            if param.default is not None:
                out[param.name] = param.default
            continue
        out[param.name] = coerce_value(param, value, f"values.{param.name}")
    return out


# ---- rendering --------------------------------------------------------------------


NOT_GIVEN = "(not given)"


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def render_prompt(spec: SkillSpec, values: dict[str, Any]) -> str:
    """The message a run sends to the agent: the template with the values in, or a
    call of the skill listing the values."""
    if spec.prompt:
        # An optional value left out reads as such ("since (not given).") rather
        # than vanishing into a sentence the model then has to guess at.
        text = PLACEHOLDER_RE.sub(
            lambda m: _format(values[m[1]]) if m[1] in values else NOT_GIVEN, spec.prompt
        )
        return text.strip()
    lines = [f"Use the {spec.command} skill."]
    lines += [f"- {name}: {_format(value)}" for name, value in values.items()]
    return "\n".join(lines)


def run_command(spec: SkillSpec, values: dict[str, Any]) -> str:
    """The slash command a run types: ``/<command>`` and the rendered request."""
    request = render_prompt(spec, values)
    return f"/{spec.command} {request}" if request else f"/{spec.command}"


def argument_hint(spec: SkillSpec) -> str:
    return " ".join(f"<{p.name}>" if p.required else f"[{p.name}]" for p in spec.parameters)


def _parameter_line(param: Parameter) -> str:
    kind = param.type
    if param.type == "select":
        kind = "one of " + ", ".join(param.options)
    notes = [kind, "required" if param.required else "optional"]
    if param.default not in (None, ""):
        notes.append(f"default {_format(param.default)}")
    line = f"- `{param.name}` ({'; '.join(notes)})"
    return f"{line}: {param.help}" if param.help else line


def skill_markdown(spec: SkillSpec) -> str:
    """``skills/<command>/SKILL.md``: name, description and argument hint in the
    front matter; for a skill with parameters, a section saying what they are and
    ``$ARGUMENTS``, where Claude Code puts what follows ``/<command>``."""
    _, body = split_front_matter(spec.body)
    front = {"name": spec.command, "description": spec.description}
    if spec.parameters:
        front["argument-hint"] = argument_hint(spec)
    text = body.strip() + "\n"
    if spec.parameters and "$ARGUMENTS" not in body:
        text += "\n## Parameters\n\n" + "\n".join(map(_parameter_line, spec.parameters))
        text += "\n\n## This request\n\n$ARGUMENTS\n"
    front_matter = yaml.dump(front, Dumper=_YAML_DUMPER, allow_unicode=True, sort_keys=False)
    return "---\n" + front_matter + "---\n\n" + text


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end < 0:
        return {}, text
    try:
        front = yaml.load(text[4:end], Loader=_YAML_LOADER) or {}
    except yaml.YAMLError:
        raise SkillError("body", "the SKILL.md front matter is not valid YAML") from None
    if not isinstance(front, dict):
        raise SkillError("body", "the SKILL.md front matter must be a mapping")
    rest = text[end + 4 :]
    return front, rest[1:] if rest.startswith("\n") else rest


def build_spec(meta: Any, body: Any, files: dict[str, bytes] | None = None) -> SkillSpec:
    """A checked SkillSpec from metadata (skill.yaml or an API body) and SKILL.md."""
    if not isinstance(meta, dict):
        raise SkillError("skill", "expected a mapping")
    unknown = set(meta) - {"command", "title", "description", "parameters", "prompt", "tags"}
    if unknown:
        raise SkillError(sorted(unknown)[0], "unknown field")
    _text("body", body, MAX_BODY)
    split_front_matter(body)  # reject broken front matter early
    params = parse_parameters(meta.get("parameters"))
    prompt = _text("prompt", meta.get("prompt"), MAX_TEMPLATE, required=False)
    names = {p.name for p in params}
    for placeholder in PLACEHOLDER_RE.findall(prompt):
        if placeholder not in names:
            raise SkillError("prompt", f"{{{{{placeholder}}}}} is not a parameter")
    tags = meta.get("tags") or []
    if not isinstance(tags, list) or len(tags) > 20:
        raise SkillError("tags", "expected a list of at most 20 tags")
    return SkillSpec(
        command=valid_command(meta.get("command")),
        title=_text("title", meta.get("title"), MAX_TITLE),
        description=_text("description", meta.get("description"), MAX_DESCRIPTION),
        body=body,
        parameters=params,
        prompt=prompt,
        tags=tuple(_text(f"tags[{i}]", t, 40) for i, t in enumerate(tags)),
        files=dict(files or {}),
    )


# ---- what a sandbox receives --------------------------------------------------------

# The fields of an installed skill that reach its agent: SKILL.md is rendered from
# them, and a run's request from ``parameters`` and ``prompt``.
DELIVERED_FIELDS = ("command", "title", "description", "body", "parameters", "prompt", "tags")


def delivery_checksum(fields: Mapping[str, Any], bundle_sha256: str | None) -> str:
    """The sha256 an install records for what its sandbox receives: the delivered
    fields as canonical JSON, and the bundle's sha256 (its bytes are checked against
    that). The service computes it when an install is made or updated; the sandbox
    recomputes it from the manifest entry and refuses to write a skill that differs.

    It covers the fields SKILL.md is rendered from rather than the rendered text, so
    a sandbox image whose renderer differs from the service's does not refuse every
    skill; the sandbox renders only what it has verified."""
    content = {key: fields[key] for key in DELIVERED_FIELDS}
    content["bundle_sha256"] = bundle_sha256
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---- bundles ----------------------------------------------------------------------


# The checks themselves are shared with the workspace's ZIP uploads (rules/archives.py).
BundleEntry = ArchiveEntry
BUNDLE_LIMITS = ArchiveLimits(
    noun="bundle",
    max_entries=MAX_BUNDLE_ENTRIES,
    max_header_bytes=MAX_BUNDLE_HEADER_BYTES,
    max_files=MAX_BUNDLE_FILES,
    max_file_bytes=MAX_BUNDLE_FILE_BYTES,
    max_total_bytes=MAX_BUNDLE_BYTES,
    max_path_length=MAX_PATH_LENGTH,
    max_ratio=MAX_COMPRESSION_RATIO,
    reserved={"SKILL.md": "SKILL.md is the skill's body"},
)
_TOO_MANY_ENTRIES = BUNDLE_LIMITS.too_many_entries


@contextmanager
def _as_skill_error() -> Iterator[None]:
    """An archive refusal as the SkillError the skills API answers with."""
    try:
        yield
    except ArchiveError as e:
        raise SkillError(e.field, e.message) from None


def check_bundle(
    entries: Iterable[BundleEntry], compressed: int | None = None
) -> list[BundleEntry]:
    """The regular files of a bundle, or SkillError naming the first bad entry
    (``archives.check_entries`` within the bundle limits; lazy listings are checked
    as they are read)."""
    with _as_skill_error():
        return check_entries(entries, BUNDLE_LIMITS, compressed)


def tar_entries(fileobj: IO[bytes]) -> list[BundleEntry]:
    """Every member of a tar (tar.gz/bz2/xz), read within the bundle limits."""
    with _open_tar(fileobj.read()) as tar:
        return [_tar_entry(info) for info in tar]


def _tar_entry(info: tarfile.TarInfo) -> BundleEntry:
    if info.isreg():
        kind = "file"
    elif info.isdir():
        kind = "dir"
    elif info.issym():
        kind = "symlink"
    elif info.islnk():
        kind = "hardlink"
    elif info.ischr() or info.isblk() or info.isfifo():
        kind = "device"
    else:
        kind = "other"
    return BundleEntry(info.name, kind, info.size)


def zip_entries(fileobj: IO[bytes]) -> list[BundleEntry]:
    """Every member of a zip, read within the bundle limits."""
    with _open_zip(fileobj.read()) as archive:
        return [zip_entry(info) for info in archive.infolist()]


def read_bundle(data: bytes) -> dict[str, bytes]:
    """The files of an uploaded bundle (tar, tar.gz/bz2/xz or zip), checked entry by
    entry as the archive is read; SkillError names the offending entry or limit.

    Nothing is unpacked ahead of the checks: a tar is read in one pass, each file's
    bytes right after its header has passed, and what the reader may take is bounded
    as it reads (entries, header bytes, unpacked bytes; see MAX_BUNDLE_*). File sizes
    come from the headers (tarfile and zipfile never return more than a header
    declares) and are enforced again while reading."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise SkillError("bundle", f"bundles are limited to {MAX_BUNDLE_BYTES} bytes")
    try:
        return _read_archive(data)
    except ARCHIVE_ERRORS as e:
        raise SkillError("bundle", f"not a readable tar or zip archive ({e})") from None


# What a damaged or unsupported archive raises from zipfile/tarfile while it is read
# (a wrongly checksummed or encrypted zip member, an unknown compression method, a
# truncated gzip stream, a name that is not UTF-8 ...).
ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
    UnicodeError,
)
try:
    import lzma

    ARCHIVE_ERRORS += (lzma.LZMAError,)
except ImportError:  # a Python built without xz: such bundles are unreadable anyway
    pass


def _read_archive(data: bytes) -> dict[str, bytes]:
    if zipfile.is_zipfile(io.BytesIO(data)):
        with _open_zip(data) as archive:
            files = check_bundle(map(zip_entry, archive.infolist()), compressed=len(data))
            return {e.name: _read_capped(archive.open(e.name), e.name) for e in files}
    out: dict[str, bytes] = {}
    with _open_tar(data) as tar:

        def listing() -> Iterator[BundleEntry]:
            for info in tar:
                entry = _tar_entry(info)
                yield entry
                # check_bundle asks for the next entry only once this one has passed:
                # read its bytes now, while the stream is at them.
                if entry.kind == "file":
                    member = tar.extractfile(info)
                    assert member is not None  # a regular file
                    out[str(PurePosixPath(entry.name))] = _read_capped(member, entry.name)

        check_bundle(listing(), compressed=len(data))
    return out


def _read_capped(stream: IO[bytes], name: str) -> bytes:
    with stream:
        data = stream.read(MAX_BUNDLE_FILE_BYTES + 1)
    if len(data) > MAX_BUNDLE_FILE_BYTES:
        raise SkillError(f"bundle: {name!r}", f"files are limited to {MAX_BUNDLE_FILE_BYTES} bytes")
    return data


# ---- reading archives within bounds ---------------------------------------------------


def _open_zip(data: bytes) -> zipfile.ZipFile:
    """A zip in memory opened within the bundle limits (archives.open_zip)."""
    with _as_skill_error():
        return open_zip(io.BytesIO(data), BUNDLE_LIMITS)


def _open_tar(data: bytes) -> tarfile.TarFile:
    """A tar (plain, gz, bz2 or xz) read forward through a _TarStream, so that every
    header tarfile reads is counted and bounded as it is read."""
    stream = _TarStream(_unpacking(data))
    # _TarStream has the file methods tarfile uses (read, tell, seek), not all of
    # typeshed's _Fileobj protocol.
    return tarfile.open(fileobj=stream, mode="r:", tarinfo=_CountedTarInfo)  # type: ignore[call-overload]


def _unpacking(data: bytes) -> io.BufferedIOBase:
    """``data`` unpacked as it is read (never ahead of the reader). The formats are
    told by their magic numbers (bzip2's with its first block's, as a plain tar
    starts with a file name, which could be "BZh")."""
    raw = io.BytesIO(data)
    if data.startswith(b"\x1f\x8b\x08"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    try:
        if data.startswith(b"BZh") and data[4:10] == b"1AY&SY":
            import bz2

            return bz2.BZ2File(raw)
        if data.startswith(b"\xfd7zXZ\x00"):
            import lzma

            return lzma.LZMAFile(raw)
    except ImportError:  # a Python built without bz2 or xz
        raise SkillError("bundle", "this archive's compression is not available here") from None
    return raw


class _TarStream:
    """The unpacked bytes of a tar as tarfile reads them, forward only.

    It counts what tarfile reads and refuses, before reading, what would go past a
    bound: every header (members, pax and GNU long-name headers, global headers)
    against MAX_BUNDLE_ENTRIES, the bytes read as headers against
    MAX_BUNDLE_HEADER_BYTES (a pax header of 2 GiB of zeros is a few MiB gzipped,
    and tarfile would read it whole), and all unpacked bytes against
    MAX_BUNDLE_UNPACKED_BYTES. tarfile keeps an object per member for the life of
    the archive, so the entry count is what bounds its memory."""

    def __init__(self, stream: io.BufferedIOBase):
        self._stream = stream
        self._pos = 0
        self._entries = 0
        self._header_bytes = 0
        self._header_depth = 0  # > 0 while tarfile reads a header (pax ones nest)

    @contextmanager
    def header(self) -> Iterator[None]:
        """Around tarfile's reading of one header block and what it carries."""
        self._entries += 1
        if self._entries > MAX_BUNDLE_ENTRIES:
            raise SkillError("bundle", _TOO_MANY_ENTRIES)
        if self._header_depth >= MAX_EXTENDED_HEADERS:
            # tarfile reads the header an extended header describes by recursion
            raise SkillError(
                "bundle", f"more than {MAX_EXTENDED_HEADERS} extended headers in a row"
            )
        self._header_depth += 1
        try:
            yield
        finally:
            self._header_depth -= 1

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # tarfile always asks for a size; bounded anyway
            size = MAX_BUNDLE_UNPACKED_BYTES - self._pos
        if self._header_depth and self._header_bytes + size > MAX_BUNDLE_HEADER_BYTES:
            raise SkillError(
                "bundle", f"archive headers are limited to {MAX_BUNDLE_HEADER_BYTES} bytes"
            )
        if self._pos + size > MAX_BUNDLE_UNPACKED_BYTES:
            raise SkillError(
                "bundle", f"bundles unpack to at most {MAX_BUNDLE_UNPACKED_BYTES} bytes"
            )
        data = self._stream.read(size)
        self._pos += len(data)
        if self._header_depth:
            self._header_bytes += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + (self._pos if whence == io.SEEK_CUR else 0)
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._pos:
            raise io.UnsupportedOperation("bundles are read forward only")
        while self._pos < target:  # skipping still unpacks: read, counted, dropped
            if not self.read(min(target - self._pos, 1 << 16)):
                break
        return self._pos


class _CountedTarInfo(tarfile.TarInfo):
    """Has each header tarfile reads (through the documented TarInfo.fromtarfile,
    which pax and GNU long-name headers call again for the header they describe)
    counted and bounded by the _TarStream under it."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> Self:
        stream = tar.fileobj
        assert isinstance(stream, _TarStream)
        with stream.header():
            return super().fromtarfile(tar)


def pack_bundle(files: dict[str, bytes]) -> bytes:
    """A canonical tar.gz of the files: sorted, no times or owners, so the same
    files always give the same bytes (and sha256), whoever uploaded them."""
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


# ---- the official skills folder -----------------------------------------------------


def load_skill_dir(path: Path) -> SkillSpec:
    """A skill folder: skill.yaml, SKILL.md and any other files (the bundle)."""
    try:
        meta = yaml.load((path / "skill.yaml").read_text("utf-8"), Loader=_YAML_LOADER)
        body = (path / "SKILL.md").read_text("utf-8")
    except (OSError, yaml.YAMLError) as e:
        raise SkillError(path.name, f"unreadable skill folder: {e}") from None
    entries, files = [], {}
    for item in sorted(path.rglob("*")):
        rel = item.relative_to(path).as_posix()
        if rel in ("skill.yaml", "SKILL.md"):
            continue
        if item.is_symlink():
            entries.append(BundleEntry(rel, "symlink", 0))
        elif item.is_dir():
            entries.append(BundleEntry(rel, "dir", 0))
        elif item.is_file():
            entries.append(BundleEntry(rel, "file", item.stat().st_size))
            files[rel] = item.read_bytes()
        else:
            entries.append(BundleEntry(rel, "other", 0))
    check_bundle(entries)
    spec = build_spec(meta, body, files)
    if spec.command != path.name:
        raise SkillError(path.name, f"the folder must be named after the command {spec.command!r}")
    return spec


def load_official_skills(root: Path) -> list[SkillSpec]:
    return [load_skill_dir(p) for p in sorted(root.iterdir()) if p.is_dir()]


# ---- visibility ---------------------------------------------------------------------

TIERS = ("official", "public", "group", "private")
OFFICIAL_SCOPE = "custom:sac:skills:official"


@dataclass(frozen=True)
class Viewer:
    name: str
    admin: bool = False
    groups: tuple[str, ...] = ()
    scopes: frozenset[str] = frozenset()

    @property
    def curates_official(self) -> bool:
        return self.admin or OFFICIAL_SCOPE in self.scopes


def can_read(skill: dict[str, Any], viewer: Viewer) -> bool:
    """Official and public skills: everyone; group: its members; private: the owner."""
    if viewer.admin or skill["owner"] == viewer.name:
        return True
    if skill["visibility"] in ("official", "public"):
        return True
    return skill["visibility"] == "group" and skill["group_name"] in viewer.groups


def can_edit(skill: dict[str, Any], viewer: Viewer) -> bool:
    """The owner or an admin; official skills also whoever curates official skills."""
    if viewer.admin or (skill["owner"] and skill["owner"] == viewer.name):
        return True
    return skill["visibility"] == "official" and viewer.curates_official


def check_tier(viewer: Viewer, visibility: Any, group: Any) -> tuple[str, str | None]:
    """(visibility, group) the viewer may publish at, or SkillError."""
    if visibility not in TIERS:
        raise SkillError("visibility", f"one of {', '.join(TIERS)}")
    if visibility == "official" and not viewer.curates_official:
        raise SkillError("visibility", f"official skills need an admin or {OFFICIAL_SCOPE}")
    if visibility == "group":
        if not isinstance(group, str) or not group:
            raise SkillError("group", "a group skill names the JupyterHub group it is shared with")
        if group not in viewer.groups and not viewer.admin:
            raise SkillError("group", f"you are not a member of the group {group!r}")
        return visibility, group
    if group is not None:
        raise SkillError("group", "only group skills name a group")
    return visibility, None
