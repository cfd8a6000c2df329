"""The contract of each API: one OpenAPI 3.1 document, a YAML file in the package.

The service's (``service/openapi.yaml``) and the sandbox extension's
(``server_extension/openapi.yaml``) documents are what both APIs serve at
``…/api/openapi.json`` and what their handlers validate request bodies and query
parameters against, so what the document says and what the code accepts cannot
drift apart (issue 18). Refusals keep the ``{"error", "message", "field"}`` shape
of every other error: ``field`` is the dotted path of the value at fault, and the
error code is the schema's ``x-error`` where one says it (``invalid_slug``,
``invalid_setting``), else ``missing_field``, ``unknown_field`` or ``invalid_field``;
the message the schema's ``x-message`` where one says it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from . import __version__
from .errors import ApiError

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
# Longer error messages are cut: a schema error may quote the whole value sent.
MESSAGE_CHARS = 300


@dataclass(frozen=True)
class Operation:
    """One method of one path of a document, ready to check requests."""

    method: str
    path: str
    spec: Mapping[str, Any]
    document: Mapping[str, Any]

    @cached_property
    def body_validator(self) -> Draft202012Validator | None:
        content = (self.spec.get("requestBody") or {}).get("content") or {}
        schema = (content.get("application/json") or {}).get("schema")
        return None if schema is None else _validator(schema, self.document)

    @cached_property
    def query_parameters(self) -> dict[str, Draft202012Validator]:
        return {
            p["name"]: _validator(p.get("schema") or {}, self.document, formats=True)
            for p in self.spec.get("parameters") or ()
            if p.get("in") == "query"
        }

    def check_body(self, body: Any) -> None:
        """Raise the 400 that names what in ``body`` the operation's schema refuses."""
        if self.body_validator is not None:
            _raise_first(self.body_validator, body, "")

    def check_query(self, arguments: Mapping[str, list[bytes]]) -> None:
        """Raise the 400 for the first declared query parameter whose value its schema
        refuses (undeclared ones are left alone: the hub and browsers add their own)."""
        for name, validator in self.query_parameters.items():
            for raw in arguments.get(name, ()):
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                _raise_first(validator, _from_query(text, validator.schema), name)

    def response_problem(self, status: int, content_type: str, body: bytes) -> str | None:
        """What is wrong with an answer to this operation (None: nothing): a 2xx or
        4xx status it does not declare, or a JSON body outside its declared schema.
        (For the tests and the fuzzer: the service does not check its own answers.)"""
        responses = self.spec.get("responses") or {}
        declared = responses.get(str(status)) or responses.get(f"{status // 100}XX")
        declared = declared or responses.get("default")
        if declared is None:
            if status >= 500:
                return None  # a server error is a failure of its own, not of the schema
            return f"{status} is not a documented answer to {self.method.upper()} {self.path}"
        declared = _resolve(declared, self.document)
        schema = ((declared.get("content") or {}).get("application/json") or {}).get("schema")
        if schema is None or "json" not in content_type:
            return None
        try:
            value = json.loads(body)
        except ValueError:
            return f"{status} from {self.method.upper()} {self.path} is not JSON: {body[:200]!r}"
        error = best_match(_validator(schema, self.document).iter_errors(value))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "the body"
        return (
            f"{status} from {self.method.upper()} {self.path} breaks its schema at {where}:"
            f" {error.message[:MESSAGE_CHARS]}"
        )


def _resolve(node: Mapping[str, Any], document: Mapping[str, Any]) -> Mapping[str, Any]:
    """``node``, or what its local "$ref" points at."""
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _validator(
    schema: Mapping[str, Any], document: Mapping[str, Any], formats: bool = False
) -> Draft202012Validator:
    # The components travel with each schema so that "#/components/…" resolves.
    whole = {**schema, "components": document.get("components", {})}
    # Formats (date-time) are asserted for query parameters, which are text the
    # schema describes only by its format; bodies carry their own checks.
    checker = Draft202012Validator.FORMAT_CHECKER if formats else None
    return Draft202012Validator(whole, format_checker=checker)


def _from_query(text: str, schema: Mapping[str, Any]) -> Any:
    """A query argument as the JSON value its schema expects (they arrive as text)."""
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types or []
    if "integer" in types and text.isascii() and re.fullmatch(r"-?\d{1,18}", text):
        return int(text)
    if "boolean" in types and text in ("true", "false"):
        return text == "true"
    return text


def _field(error: ValidationError, within: str) -> tuple[str, str]:
    """The dotted field an error is about, and its default code."""
    parts = [within] if within else []
    for part in error.absolute_path:
        if isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"  # options[0].key, as the rules name a list's items
        else:
            parts.append(str(part))
    code = "invalid_field"
    if error.validator == "required":
        missing = [n for n in error.validator_value if n not in error.instance]
        parts.append(missing[0])
        code = "missing_field"
    elif error.validator == "additionalProperties":
        known = set(error.schema.get("properties") or {})
        parts.append(sorted(set(error.instance) - known)[0])
        code = "unknown_field"
    return ".".join(parts) or "body", code


def _raise_first(validator: Draft202012Validator, value: Any, within: str) -> None:
    error = best_match(validator.iter_errors(value), key=_relevance)
    if error is None:
        return
    field, code = _field(error, within)
    if code != "missing_field" and isinstance(error.schema, dict):
        # The schema's own code for what it refuses (x-error), as the API documents it.
        code = error.schema.get("x-error", code)
    # A schema's own words for what it refuses (x-message), where jsonschema's would
    # not tell a person what to do ("'x' is not of type 'null'"): one text, or one
    # per keyword that refuses ({"pattern": "…"}).
    said = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if isinstance(said, dict):
        said = said.get(str(error.validator))
    message = f"{field}: {said or error.message}"
    if len(message) > MESSAGE_CHARS:
        message = message[: MESSAGE_CHARS - 1] + "…"
    raise ApiError(400, code, message, field=field)


def _relevance(error: ValidationError) -> tuple[int, ...]:
    # best_match prefers shallow errors; an unknown or missing field first, as the
    # hand-written checks did, then the first field in document order.
    return (-len(error.path), error.validator in ("additionalProperties", "required"))


class Contract:
    """An API's OpenAPI document and its operations, matched by method and path."""

    def __init__(self, document: dict[str, Any]):
        self.document = document
        self._routes: list[tuple[re.Pattern[str], str]] = sorted(
            ((_path_regex(path), path) for path in document["paths"]),
            # literal paths before templated ones (…/agents/start before …/agents/{slug})
            key=lambda item: (item[1].count("{"), -len(item[1])),
        )
        # One Operation per (path, method), so its validators are compiled once, not
        # for every request that asks.
        self._operations: dict[tuple[str, str], Operation] = {}
        self._schemas: dict[str, Draft202012Validator] = {}

    def check(self, schema: str, value: Any, within: str = "") -> None:
        """Refuse ``value`` unless it is a valid ``components/schemas/<schema>``, in
        the house shape (ApiError 400 naming the field): how an operation checks
        what reaches it by another way than the API (an admin page's form), with
        the rules the API document says, not a second copy of them."""
        if schema not in self._schemas:
            ref = {"$ref": f"#/components/schemas/{schema}"}
            self._schemas[schema] = _validator(ref, self.document)
        _raise_first(self._schemas[schema], value, within)

    @classmethod
    def load(cls, path: Path, filled: Mapping[str, Mapping[str, Any]] | None = None) -> Contract:
        """The document in the package file ``path``, with the schemas ``filled``
        names updated by what code generates (the settings from rules/settings.py's
        SPECS, the providers from PRESETS): one source for what the rules list."""
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        document["info"]["version"] = __version__
        schemas = document.get("components", {}).get("schemas", {})
        for name, parts in (filled or {}).items():
            schemas[name].update(parts)
        return cls(document)

    def served(self, server_url: str) -> dict[str, Any]:
        """The document as served at ``server_url`` (the prefix of every path)."""
        served = copy.copy(self.document)
        served["servers"] = [{"url": server_url.rstrip("/")}]
        return served

    def operation(self, method: str, path: str) -> Operation | None:
        """The operation that answers ``method`` on ``path`` (relative to the server
        URL, starting with "/"), or None when the document has none."""
        method = method.lower()
        for regex, template in self._routes:
            if regex.fullmatch(path):
                spec = self.document["paths"][template].get(method)
                if spec is not None:
                    key = (template, method)
                    if key not in self._operations:
                        self._operations[key] = Operation(method, template, spec, self.document)
                    return self._operations[key]
        return None


def _path_regex(template: str) -> re.Pattern[str]:
    # A path parameter is one segment, except a last parameter named "path" (the
    # workspace's files, the relay): that one takes the rest, slashes included.
    out, last = "", 0
    for m in re.finditer(r"\{([^}]+)\}", template):
        out += re.escape(template[last : m.start()])
        whole_rest = m.group(1) == "path" and m.end() == len(template)
        out += "(.+)" if whole_rest else "([^/]+)"
        last = m.end()
    return re.compile(out + re.escape(template[last:]))
