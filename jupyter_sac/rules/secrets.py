"""Users' secrets and the agents they are granted to (pure, no I/O).

A secret is a named value its owner keeps in the service (a Git token, a cloud
key), stored encrypted and never shown again. An agent's *grants* say which of its
owner's secrets its sandbox gets at start, and how: as an environment variable,
as a file in ``$SAC_SECRETS_DIR``, or both. Before history leaves a sandbox, the
values it was given are replaced by ``[secret NAME]`` (``Redactor``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# A secret's name: what an environment variable may be called, so that a grant
# without a target delivers it under its own name.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# A delivered file's name: one path part, no dot files (no "..").
FILE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# A value shorter than this could not be told from ordinary text when history is
# scrubbed of it (a 3-letter "secret" would blank every word that holds it).
MIN_VALUE_CHARS = 8
MAX_VALUE_CHARS = 65536
MAX_SECRETS_PER_USER = 100
MAX_GRANTS_PER_AGENT = 50

# Variables a sandbox's platform sets or depends on: a secret may not replace them
# (the credential proxy's token, the service's URLs, the egress proxy, the loader).
RESERVED_ENV_PREFIXES = (
    "SAC_",
    "JUPYTER",
    "JPY_",
    "ANTHROPIC_",
    "CLAUDE_",
    "LD_",
    "PYTHON",
    "BASH_FUNC_",
    "NODE_",
)
RESERVED_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TERM",
        "PWD",
        "TMPDIR",
        "LANG",
        "IS_SANDBOX",
        "DISABLE_AUTOUPDATER",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
    }
)

# What the sandbox is told, besides the values: which variables hold secrets (for
# the extension to scrub history of them) and where the files are.
SECRET_ENV_NAMES_VAR = "SAC_SECRET_ENV"
SECRETS_DIR_VAR = "SAC_SECRETS_DIR"
# Where a sandbox finds the secrets granted as files: memory only (bubblewrap's
# /run is the sandbox's own tmpfs; on Kubernetes a Secret volume is tmpfs too).
SANDBOX_SECRETS_DIR = "/run/sac-secrets"


def env_name_reserved(name: str) -> bool:
    """``name`` is a variable the platform owns (compared without case: the egress
    proxy's variables exist in both cases)."""
    upper = name.upper()
    return upper in RESERVED_ENV_NAMES or upper.startswith(RESERVED_ENV_PREFIXES)


@dataclass(frozen=True)
class Grant:
    """One of the owner's secrets given to an agent: as the variable ``env`` and/or
    the file ``file`` (at least one)."""

    name: str
    env: str | None = None
    file: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.env is not None:
            out["env"] = self.env
        if self.file is not None:
            out["file"] = self.file
        return out


class GrantError(ValueError):
    """A list of grants that cannot be delivered; ``index`` is the offending grant's."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


def parse_grants(items: Sequence[Mapping[str, Any]], known: Iterable[str]) -> list[Grant]:
    """Grants from an API body (already checked against the contract's shape):
    each names one of ``known`` (the owner's secrets); ``env`` defaults to the
    secret's name when neither target is given; no two grants deliver to the same
    variable or file, and no variable is one the platform owns.

    Raises GrantError with the offending grant's index."""
    names = set(known)
    grants: list[Grant] = []
    envs: set[str] = set()
    files: set[str] = set()
    for i, item in enumerate(items):
        name = str(item["name"])
        if name not in names:
            raise GrantError(f"no secret named {name!r}; set it first (PUT api/secrets/{name})", i)
        env, file = item.get("env"), item.get("file")
        if env is None and file is None:
            env = name
        if env is not None:
            if env_name_reserved(env):
                raise GrantError(f"{env!r} is a variable the platform sets; choose another", i)
            if env.upper() in envs:
                raise GrantError(f"two grants deliver to the variable {env!r}", i)
            envs.add(env.upper())
        if file is not None:
            if file in files:
                raise GrantError(f"two grants deliver to the file {file!r}", i)
            files.add(file)
        grants.append(Grant(name=name, env=env, file=file))
    return grants


def deliveries(
    grants: Sequence[Mapping[str, Any]], values: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """What a sandbox gets for an agent's stored ``grants`` given the owner's
    decrypted ``values`` by name: (variables, files by name, names of the secrets
    that are granted but gone). A grant whose target became reserved since it was
    made is skipped too, as gone."""
    env: dict[str, str] = {}
    files: dict[str, str] = {}
    missing: list[str] = []
    for grant in grants:
        name = grant["name"]
        value = values.get(name)
        target = grant.get("env")
        if value is None or (target is not None and env_name_reserved(target)):
            missing.append(name)
            continue
        if target is not None:
            env[target] = value
        if grant.get("file") is not None:
            files[grant["file"]] = value
    return env, files, missing


class Redactor:
    """Replaces known secret values in text and in JSON-like structures by
    ``[secret NAME]``, longest value first (one value may contain another)."""

    def __init__(self, values: Mapping[str, str]):
        # value -> the name it is shown as (the first name wins for a shared value).
        self._names: dict[str, str] = {}
        for name, value in values.items():
            if len(value) >= MIN_VALUE_CHARS:
                self._names.setdefault(value, name)
        ordered = sorted(self._names, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: f"[secret {self._names[m.group(0)]}]", text)

    def __call__(self, value: Any) -> Any:
        """``value`` (str, list, dict: keys and values) with every secret replaced."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self(v) for k, v in value.items()}
        return value
