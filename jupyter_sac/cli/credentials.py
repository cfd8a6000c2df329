"""Where `sac login` keeps hub tokens: ``$XDG_CONFIG_HOME/jupyter-sac/credentials.json``.

One file for every hub logged in to, ``{"default": url, "hubs": {url: {"token",
"user", "service_url"}}}``, readable by its owner only (0600, in a 0700 folder),
and replaced whole (written beside it, then renamed), so a crash or a second
`sac login` never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class CredentialsError(Exception):
    """The credentials file cannot be used (say where and why)."""


@dataclass(frozen=True)
class Login:
    """A hub's URL (normalised: ``hub_url``), a token for it, the user it acts for,
    and the `sac` service's URL when it is not beside the hub."""

    url: str
    token: str
    user: str = ""
    service_url: str | None = None


def credentials_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "jupyter-sac" / "credentials.json"


def hub_url(url: str) -> str:
    """A hub's URL as the credentials key it: a scheme (http:// when none was
    typed), no query, and the hub's base URL with one trailing ``/`` (a URL of the
    hub's pages, ``…/hub/`` or ``…/hub/home``, is cut back to it)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a hub URL: {url!r} (expected http(s)://host[:port]/)")
    path = parts.path
    if "/hub/" in path + "/":
        path = path[: (path + "/").index("/hub/")]
    return urlunsplit((parts.scheme, parts.netloc.lower(), path.rstrip("/") + "/", "", ""))


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"default": None, "hubs": {}}
    except (OSError, ValueError) as e:
        raise CredentialsError(f"{path}: cannot read it ({e}); remove it and log in again") from e
    if not isinstance(data, dict) or not isinstance(data.get("hubs"), dict):
        raise CredentialsError(f"{path}: not a credentials file; remove it and log in again")
    return data


def save(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically, 0600 in a 0700 folder."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".credentials-", suffix=".tmp")
    try:
        # mkstemp makes the file 0600 (whatever the umask) before anything is in it.
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def store(path: Path, login: Login) -> None:
    """Keep ``login`` (replacing the hub's earlier one) and make its hub the default."""
    data = load(path)
    entry: dict[str, Any] = {"token": login.token, "user": login.user}
    if login.service_url:
        entry["service_url"] = login.service_url
    data["hubs"][login.url] = entry
    data["default"] = login.url
    save(path, data)


def find(path: Path, url: str | None = None) -> Login | None:
    """The stored login for the hub at ``url``, or for the default hub."""
    data = load(path)
    key = hub_url(url) if url else data.get("default")
    entry = data["hubs"].get(key) if key else None
    if not key or not isinstance(entry, dict) or not entry.get("token"):
        return None
    return Login(key, entry["token"], entry.get("user", ""), entry.get("service_url"))


def forget(path: Path, url: str) -> bool:
    """Remove the hub's login (True if there was one); the default moves to another
    hub still logged in to, if any."""
    data = load(path)
    if data["hubs"].pop(url, None) is None:
        return False
    if data.get("default") == url:
        data["default"] = next(iter(data["hubs"]), None)
    save(path, data)
    return True
