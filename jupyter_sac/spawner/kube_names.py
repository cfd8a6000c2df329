"""Kubernetes names and label values for agents: pure functions, no I/O.

An agent's objects are named ``sac-{user}-{agent}``. Kubernetes limits names
(DNS-1123 labels: 63 characters of ``[a-z0-9-]``, starting and ending with a
letter or digit) and label values (63 characters of ``[A-Za-z0-9._-]``, starting
and ending with an alphanumeric). JupyterHub user names may hold characters
neither allows (``@``, ``.``, ``_``, capitals) and may contain hyphens, so
``sac-a-b-c`` could be user ``a-b``'s agent ``c`` or user ``a``'s agent ``b-c``.
Whenever the plain name is ambiguous, altered by escaping or too long, a short
hash of the raw (user, agent) pair is appended, so two agents never share a name.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 63  # DNS-1123 label: pod names, label values
HASH_LENGTH = 8

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][A-Za-z0-9._-]{0,61})?[A-Za-z0-9])?$")
_SIMPLE_USER = re.compile(r"^[a-z0-9]+$")
_AGENT_SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def is_dns_label(name: str) -> bool:
    return bool(_DNS_LABEL.match(name))


def is_label_value(value: str) -> bool:
    return len(value) <= MAX_NAME and bool(_LABEL_VALUE.match(value))


def short_hash(*parts: str) -> str:
    """A stable 8-hex-digit digest of ``parts`` (NUL-separated, so ("a-b", "c") != ("a", "b-c"))."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:HASH_LENGTH]


def _slug(text: str) -> str:
    """Lowercase, with every run of other characters turned into one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _fit(stem: str, digest: str, max_length: int) -> str:
    """``stem-digest`` cut to ``max_length``, never ending the stem on a hyphen."""
    room = max_length - len(digest) - 1
    stem = stem[:room].rstrip("-")
    return f"{stem}-{digest}" if stem else digest


def agent_object_name(
    user: str, agent: str, prefix: str = "sac", max_length: int = MAX_NAME
) -> str:
    """``{prefix}-{user}-{agent}`` as a DNS-1123 label, unique per (user, agent).

    The plain form is kept when it is unambiguous and fits: a user name of only
    lowercase letters and digits and an agent slug of the usual form. Otherwise
    the escaped form gets a hash suffix of the raw names.
    """
    plain = f"{prefix}-{user}-{agent}"
    if (
        _SIMPLE_USER.match(user)
        and _AGENT_SLUG.match(agent)
        and len(plain) <= max_length
        and is_dns_label(plain)
    ):
        return plain
    stem = "-".join(p for p in (_slug(prefix), _slug(user), _slug(agent)) if p)
    return _fit(stem, short_hash(prefix, user, agent), max_length)


def label_value(value: str) -> str:
    """``value`` as a Kubernetes label value: itself when valid, else escaped plus a hash."""
    if is_label_value(value):
        return value
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-._")
    return _fit(stem, short_hash(value), MAX_NAME)
