"""schemathesis against a running stack, from each API's own document (jupyter_sac
.contract): the bounded run in tests/test_fuzz.py and bench/fuzz.py's long campaign.

schemathesis (its CLI, in a subprocess: its own event loop and HTTP client, and a
JSON report to read back) generates requests from the document, valid and invalid,
sends them with one principal's token and checks each answer:

- ``not_a_server_error``: no 5xx;
- ``status_code_conformance``, ``content_type_conformance``,
  ``response_schema_conformance``: the answer is one the document declares;
- ``negative_data_rejection``: a request outside the document is refused, and
  ``positive_data_acceptance``: one inside it is not (but for UNSAYABLE);
- ``unsupported_method``: a method the path does not take is answered 405, and
  ``allow_header_conformance``: with an Allow header naming the ones it takes.

"No state change on a 4xx" is checked from the audit log, which records every
change the service makes in the change's own transaction: each request carries its
own X-Request-Id (sac_testing/fuzz_hooks.py, loaded into schemathesis), the hooks
note the ids answered 4xx, and no audit entry may carry one of them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What an answer must be to the document (counted as schema violations)...
SCHEMA_CHECKS = (
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "unsupported_method",
    "allow_header_conformance",
)
# ...and every check a run makes.
CHECKS = ("not_a_server_error", *SCHEMA_CHECKS)

# Operations whose requests the schema cannot say all of, so that a request inside
# the document may still be refused (400) for a reason the service gives: these
# are spared "positive_data_acceptance" (a schema-valid request accepted), and only
# these. Each with why; everything else a schema can say, the document says.
# How a request outside the document may be refused (schemathesis's default list,
# with 413: an invalid body can be one over the server's limit).
REFUSALS = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx",
]  # fmt: skip

UNSAYABLE = {
    # An agent asks for at most its owner's limit (the owner's settings now), and a
    # byte quantity given as text ("64Mi") is bounded by its value, not its spelling.
    r"^/api/agents$|^/api/users/\{user\}/agents(/\{slug\})?$": "owner's limits, quantities",
    r"^/api/settings/system$|^/api/users/\{user\}/settings$": "quantities as text",
    r"^/api/groups/\{group\}/workspace/quota$": "quantities as text",
    # A cursor is what the previous page returned: an invented one is refused; and
    # the audit log's until must come after its since.
    r"/history/(search|sessions|events)$|^/api/audit": "cursors, until after since",
    # A path's parts are limited in UTF-8 bytes (a pattern counts characters), and
    # each kind of space has its own first part (private/, public/, group/<g>/).
    r"/files/\{path\}$|^/api/agent/workspace/batch$|^/sac/api/workspace/preview$": "paths",
    # The options a terminal prompt offers have different keys (a schema's
    # uniqueItems compares whole items), and a tool's input is at most 256 KiB.
    r"^/api/hitl/requests$": "unique option keys, input size",
    # A SKILL.md's front matter must be YAML, and its prompt's {{placeholders}}
    # parameters of the skill.
    r"^/api/skills(/\{id\})?$": "SKILL.md front matter, placeholders",
    # A webhook's URL must name a host on the administrator's allow-list (a
    # setting), and must parse as an http(s) URL without credentials.
    r"^/api/webhooks(/\{id\})?$": "the URL allow-list",
    # A bundle is an archive: random bytes are seldom one.
    r"^/api/skills/\{id\}/bundle$": "an archive's contents",
    # A template's definition is at most 64 KiB as JSON, its seed files' paths stay
    # in the workspace, and a secret it names must be one a sandbox can be given.
    r"^/api/templates(/\{id\})?$": "definition size, workspace paths, secret names",
    # A task's repository URL must parse with a host and no credentials, and the
    # secret it names must be one its owner has; the sandbox's checkout must work.
    r"^/api/users/\{user\}/agents/\{slug\}/tasks$": "URL parts, the owner's secrets",
    r"^/sac/api/tasks/run$": "a repository that can be checked out",
}


@dataclass
class FuzzRun:
    """What one schemathesis run found."""

    cases: int = 0
    server_errors: int = 0
    schema_violations: int = 0
    refused_request_ids: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    output: str = ""

    def add(self, other: FuzzRun) -> None:
        self.cases += other.cases
        self.server_errors += other.server_errors
        self.schema_violations += other.schema_violations
        self.refused_request_ids += other.refused_request_ids
        self.failures += other.failures
        self.output += other.output

    def summary(self) -> str:
        lines = [f"{self.cases} cases"]
        for f in self.failures:
            lines.append(f"{f['code']} x{f['count']}: {f['title']} ({', '.join(f['operations'])})")
            if f.get("example"):
                lines.append(f"    for example: {f['example']}")
        return "\n".join(lines)


def fuzz(
    document: dict[str, Any],
    base_url: str,
    token: str | None,
    *,
    headers: dict[str, str] | None = None,
    max_examples: int,
    exclude_methods: tuple[str, ...] = (),
    exclude_paths: str | None = None,
    workers: int = 1,
    seed: int | None = None,
    timeout: float = 600,
    include_paths: str | None = None,
    path_values: dict[str, list[str]] | None = None,
) -> FuzzRun:
    """Run schemathesis on ``document``'s operations at ``base_url`` (the document's
    server URL) with ``token`` (a hub token, as ``Authorization: token …``; None:
    none) and ``headers``, leaving out ``exclude_methods`` and the paths that
    match the regex ``exclude_paths`` (only those matching ``include_paths``, if
    given). ``path_values`` names real values of path parameters (a user, an agent)
    that half of the generated cases use, so that they reach a real resource."""
    with tempfile.TemporaryDirectory(prefix="sac-fuzz-") as tmp:
        Path(tmp, "schemathesis.toml").write_text(_config(path_values or {}))
        schema = Path(tmp, "openapi.json")
        schema.write_text(json.dumps(document))
        report = Path(tmp, "report.json")
        refused = Path(tmp, "refused.txt")
        command = [
            sys.executable, "-m", "schemathesis.cli", "run", str(schema),
            "--url", base_url.rstrip("/"),
            "--max-examples", str(max_examples),
            "--workers", str(workers),
            "--phases", "examples,coverage,fuzzing",
            "--request-timeout", "30",
            "--no-shrink",
            "--generation-database", "none",
            "--suppress-health-check", "all",
            "--continue-on-failure",
            "--report", "json", "--report-json-path", str(report),
            "--no-color",
        ]  # fmt: skip
        if token is not None:
            command += ["--header", f"Authorization: token {token}"]
        for name, value in (headers or {}).items():
            command += ["--header", f"{name}: {value}"]
        if seed is not None:
            command += ["--seed", str(seed)]
        for method in exclude_methods:
            command += ["--exclude-method", method]
        if exclude_paths:
            command += ["--exclude-path-regex", exclude_paths]
        if include_paths:
            command += ["--include-path-regex", include_paths]
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "sac_testing.fuzz_hooks",
            "SAC_FUZZ_REFUSED": str(refused),
        }
        # In the temporary folder: schemathesis keeps a .schemathesis/ store where it runs.
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False,
            cwd=tmp,
        )  # fmt: skip
        run = FuzzRun(output=proc.stdout + proc.stderr[-5_000:])
        if not report.exists():
            raise RuntimeError(f"schemathesis wrote no report:\n{run.output}")
        data = json.loads(report.read_text())
        if data.get("errors"):
            raise RuntimeError(f"schemathesis could not run: {data['errors']}\n{run.output}")
        run.cases = data["test_cases"]["generated"]
        run.failures = data["failures"]
        for failure in run.failures:
            # The report has no example: the CLI's own text has one per operation.
            failure["example"] = _example(proc.stdout, failure["operations"][0])
        for failure in data["failures"]:
            if failure["type"] == "not_a_server_error" or failure["code"] == "not_a_server_error":
                run.server_errors += failure["count"]
            else:
                run.schema_violations += failure["count"]
        if refused.exists():
            run.refused_request_ids = refused.read_text().split()
        return run


def _example(output: str, operation: str) -> str:
    """What schemathesis printed about ``operation``'s failures (its request as curl,
    the answer), cut short."""
    match = re.search(rf"_+ {re.escape(operation)} _+\n(.*?)(?=\n_{{5,}} |\n={{5,}})", output, re.S)
    return match[1].strip()[:1500] if match else ""


def _config(path_values: dict[str, list[str]]) -> str:
    """The run's schemathesis.toml: the checks (here, not on the command line, where
    a check named would win over an operation's exception), the operations spared
    the positive check (UNSAYABLE), and each path parameter of ``path_values`` drawn
    from its real values for half of the cases (a dictionary; the other half stays
    generated)."""
    lines = []
    for name, values in path_values.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    if path_values:
        lines.append("[parameters]")
        for name in path_values:
            lines.append(f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}')
        lines.append("")
    lines += ["[checks]", "enabled = false"]
    lines += [f"{check}.enabled = true" for check in CHECKS]
    # An invalid body may also be too large: its 413 refuses it as well as a 400
    # (schemathesis's own list leaves 413 out).
    lines.append(f"negative_data_rejection.expected-statuses = {json.dumps(REFUSALS)}")
    for path in UNSAYABLE:
        lines += ["", "[[operations]]", f"include-path-regex = {json.dumps(path)}"]
        lines.append("checks.positive_data_acceptance.enabled = false")
    return "\n".join(lines) + "\n"
