"""A long fuzzing campaign: both APIs from their OpenAPI documents, with every
principal's token, against a stack of its own (tests/test_fuzz.py's campaign with
many more examples per operation; at least 20,000 cases by default): the service,
the extension, the credential proxy with an agent's key and wrong ones, real
starts, stops and restarts of an agent, and the chat WebSocket's frames.

Prints what failed and FIGURE lines: the cases run, the 5xx answers, the answers
outside the document (status, content type, schema, a refused method without
Allow, an invalid request accepted), and the requests answered 4xx that changed
something all the same (audit entries)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))  # the campaign and the test helpers live with the tests

from conftest import ADMIN_PASSWORD  # noqa: E402
from helpers import HubApi  # noqa: E402
from test_fuzz import campaign  # noqa: E402

from sac_testing import fake_anthropic  # noqa: E402
from sac_testing.stack import embedded_stack, proxy_errors  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--examples", type=int, default=150, help="examples per operation and principal"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="run the stack here and keep it (its sac-up.log) instead of in a temporary folder",
    )
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="sac-bench-fuzz-") as scratch,
        fake_anthropic.running() as fake,
        embedded_stack(args.workdir or Path(scratch), ADMIN_PASSWORD) as running,
    ):
        stack = {
            "url": running.url,
            "admin": HubApi(running.url, running.admin_token, running.harness_token),
            "service_url": running.service_url,
            "log": running.log_path,
            "fake": fake,
        }
        total, changed = campaign(stack, args.examples)
        proxied = proxy_errors(running.log_path)
    print(total.summary())
    for line in proxied:
        print(f"the proxy: {line}")
    for entry in changed:
        print(f"changed on a 4xx: {entry}")
    print(f"({time.monotonic() - started:.0f} s)")
    print(f"FIGURE fuzz_cases {total.cases} cases")
    print(f"FIGURE fuzz_5xx {total.server_errors} failures")
    print(f"FIGURE fuzz_schema_violations {total.schema_violations} failures")
    print(f"FIGURE fuzz_changed_on_4xx {len(changed)} failures")


if __name__ == "__main__":
    main()
