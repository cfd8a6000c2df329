"""schemathesis hooks for sac_testing.fuzz (loaded through SCHEMATHESIS_HOOKS):
each request carries its own X-Request-Id, which the service's audit log records
with every change; the ids of the writes answered 4xx are appended to the file
SAC_FUZZ_REFUSED names, so that the caller can check none of them changed anything."""

from __future__ import annotations

import os
import uuid
from typing import Any

import schemathesis

from jupyter_sac.localhost import resolve_localhost

# The stack serves the service and each user's agents on *.localhost hosts, which
# this process (schemathesis's) must resolve as the tests' own does.
resolve_localhost()

WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    if case.headers is None:
        case.headers = {}
    case.headers["X-Request-Id"] = f"fuzz-{uuid.uuid4().hex}"


@schemathesis.hook
def after_call(ctx: Any, case: Any, response: Any) -> None:
    if case.method.upper() in WRITES and 400 <= response.status_code < 500:
        with open(os.environ["SAC_FUZZ_REFUSED"], "a", encoding="utf-8") as out:
            out.write(case.headers["X-Request-Id"] + "\n")
