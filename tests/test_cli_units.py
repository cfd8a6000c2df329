"""The pure parts of the `sac` command: tables, the credentials file, exit codes,
help and completion, without a hub (tests/test_cli.py drives a real one)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_sac.cli import credentials, main
from jupyter_sac.cli._app import (
    AUTH,
    CONFLICT,
    ERROR,
    FORBIDDEN,
    NOT_FOUND,
    agent_ref,
    exit_code,
)
from jupyter_sac.cli.output import cell, fields, parse_value, safe_text, table
from jupyter_sac.client.errors import SacError, error_for

SAC = str(Path(sys.executable).parent / "sac")


def test_a_table_aligns_columns_and_shows_times_lists_and_absent_values() -> None:
    rows = [
        {"slug": "helper", "state": "running", "created_at": "2026-01-31T09:14:03.120931+00:00",
         "tags": ["a", "b"], "ok": True},
        {"slug": "x", "state": None, "created_at": "2026-02-01T10:00:00Z", "tags": [], "ok": False},
    ]  # fmt: skip
    text = table(rows, [("name", "slug"), ("state", "state"), ("created", "created_at"),
                        ("tags", "tags"), ("ok", "ok"), ("len", lambda r: len(r["slug"]))])  # fmt: skip
    assert text.splitlines() == [
        "NAME    STATE    CREATED           TAGS  OK   LEN",
        "helper  running  2026-01-31 09:14  a, b  yes  6",
        "x       -        2026-02-01 10:00  -     no   1",
    ]
    assert table([], [("name", "slug")]) == "NAME"


def test_long_cells_are_cut_and_multiline_text_is_one_line() -> None:
    text = table([{"t": "word " * 30}], [("text", "t")], width=20)
    assert text.splitlines()[1] == "word word word word…"
    assert cell("two\nlines\r\n  here") == "two lines here"


def test_terminal_control_characters_from_the_service_are_shown_escaped() -> None:
    # Text from sandboxes (tool inputs, conversations) must not drive the terminal:
    # clear the screen, move the cursor, reverse text or ring the bell.
    hostile = "ls\x1b[2J\x1b]0;owned\x07 \u202eevil\u202c \x9b31m"
    shown = cell(hostile)
    assert not any(c in shown for c in "\x1b\x07\u202e\u202c\x9b")
    assert shown == "ls\\x1b[2J\\x1b]0;owned\\x07 \\u202eevil\\u202c \\x9b31m"
    assert safe_text("naïve 文字 ok") == "naïve 文字 ok"
    listing = fields([("input", '{\n  "command": "rm\x1b[1A"\n}'), ("name", "x\x1by")])
    assert "\x1b" not in listing and "\\x1b[1A" in listing and "x\\x1by" in listing


def test_setting_values_are_json_where_they_parse() -> None:
    assert parse_value("10") == 10 and parse_value("true") is True
    assert parse_value('["anthropic", "glm"]') == ["anthropic", "glm"]
    assert parse_value("2Gi") == "2Gi" and parse_value("null") is None


def test_agent_references() -> None:
    assert agent_ref("helper") == (None, "helper")
    assert agent_ref("alice/helper") == ("alice", "helper")
    for bad in ("alice/", "/helper"):
        with pytest.raises(Exception, match="expected NAME or USER/NAME"):
            agent_ref(bad)


def test_server_errors_map_to_documented_exit_codes() -> None:
    assert exit_code(error_for(401, '{"error": "unauthorized", "message": "no"}')) == AUTH
    assert exit_code(error_for(404, '{"error": "not_found", "message": "no"}')) == NOT_FOUND
    assert exit_code(error_for(403, '{"error": "forbidden", "message": "no"}')) == FORBIDDEN
    assert exit_code(error_for(409, '{"error": "agent_exists", "message": "no"}')) == CONFLICT
    assert exit_code(error_for(400, '{"error": "invalid_slug", "message": "no"}')) == ERROR
    assert exit_code(error_for(502, "bad gateway")) == ERROR
    assert exit_code(SacError(0, "unreachable", "down")) == ERROR


def test_hub_urls_are_normalised() -> None:
    assert credentials.hub_url("localhost:8000") == "http://localhost:8000/"
    assert credentials.hub_url("https://Hub.Example.org/jh/hub/home?x=1") == (
        "https://hub.example.org/jh/"
    )
    assert credentials.hub_url("http://localhost:8000/hub/") == "http://localhost:8000/"
    for bad in ("ftp://x/", "http://"):
        with pytest.raises(ValueError):
            credentials.hub_url(bad)


def test_the_credentials_file_is_private_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "jupyter-sac" / "credentials.json"
    first = credentials.Login("http://a:8000/", "tok-a", "alice")
    second = credentials.Login("http://b:8000/", "tok-b", "bob", "http://b:8000/services/sac/")
    credentials.store(path, first)
    credentials.store(path, second)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert credentials.find(path) == second  # the last login is the default
    assert credentials.find(path, "a:8000") == first
    assert credentials.find(path, "http://c/") is None
    # Written beside it and renamed: no temporary file is left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == ["credentials.json"]
    assert credentials.forget(path, second.url) and credentials.find(path) == first
    assert not credentials.forget(path, second.url)
    assert json.loads(path.read_text())["default"] == first.url


def test_a_folder_others_could_read_is_closed_and_a_broken_file_is_explained(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "jupyter-sac"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    path = folder / "credentials.json"
    credentials.store(path, credentials.Login("http://a/", "t", "u"))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    path.write_text("{not json")
    with pytest.raises(credentials.CredentialsError, match="remove it and log in again"):
        credentials.find(path)


def test_without_a_login_commands_exit_3_and_say_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("SAC_HUB_URL", raising=False)
    monkeypatch.delenv("SAC_TOKEN", raising=False)
    assert main(["agents", "list"]) == AUTH
    assert "sac: not logged in: run `sac login HUB_URL`" in capsys.readouterr().err
    assert main(["agents", "frobnicate"]) == 2  # click's usage error
    assert "No such command" in capsys.readouterr().err


def test_help_and_completion_through_the_entry_point() -> None:
    helped = subprocess.run([SAC, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    for text in ("sac login http://localhost:8000", "Exit codes:", "4  not found", "agents",
                 "Run the stack on this machine:", "--json"):  # fmt: skip
        assert text in helped.stdout, text
    for shell, marker in (("bash", "_SAC_COMPLETE=bash_complete"),
                          ("zsh", "#compdef sac"), ("fish", "complete --no-files --command sac")):  # fmt: skip
        script = subprocess.run([SAC, "completion", shell], capture_output=True, text=True,
                                timeout=60)  # fmt: skip
        assert script.returncode == 0 and marker in script.stdout, script.stdout[:300]
    # What the bash script asks for when a word is completed: the commands.
    env = dict(os.environ, _SAC_COMPLETE="bash_complete", COMP_WORDS="sac ag", COMP_CWORD="1")
    completed = subprocess.run([SAC], capture_output=True, text=True, env=env, timeout=60)
    assert "plain,agents" in completed.stdout.splitlines()


def test_sac_up_keeps_its_options() -> None:
    helped = subprocess.run([SAC, "up", "--help"], capture_output=True, text=True, timeout=60)
    for option in ("--ip", "--port", "--domain", "--no-subdomains", "--proxy", "--data-dir",
                   "--config"):  # fmt: skip
        assert option in helped.stdout, option
    bad = subprocess.run([SAC, "up", "--proxy", "nginx"], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "nginx" in bad.stderr


def test_which_login_a_command_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_sac.cli._app import NotLoggedIn, Session

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("SAC_HUB_URL", "SAC_TOKEN", "SAC_SERVICE_URL"):
        monkeypatch.delenv(name, raising=False)
    path = credentials.credentials_path()
    assert path == tmp_path / "jupyter-sac" / "credentials.json"
    credentials.store(path, credentials.Login("http://a:8000/", "tok-a", "alice"))
    credentials.store(path, credentials.Login("http://b:8000/", "tok-b", "bob"))
    assert Session().login().token == "tok-b"  # the last hub logged in to
    assert Session(hub="http://a:8000").login().token == "tok-a"  # --hub picks another
    monkeypatch.setenv("SAC_HUB_URL", "http://a:8000/hub/")
    assert Session().login().token == "tok-a"
    with pytest.raises(NotLoggedIn, match="not logged in to http://c"):
        Session(hub="http://c").login()
    # $SAC_TOKEN with a hub URL: no file needed (CI).
    monkeypatch.setenv("SAC_TOKEN", "tok-env")
    monkeypatch.setenv("SAC_SERVICE_URL", "http://a:8000/services/sac/")
    assert Session().login() == credentials.Login(
        "http://a:8000/", "tok-env", "", "http://a:8000/services/sac/"
    )
