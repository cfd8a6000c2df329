"""The `sac` service's operations: plain async functions per domain (agents,
settings, organisation keys, HITL, workspace quotas), each taking the service's
context and the actor. The API's handlers and the admin and person pages parse a
request, call an operation and serialise what it returns; who may do what,
validation, the change and its audit entry live here, testable without tornado
or a hub (tests/test_operations.py)."""

from .context import Actor, ServiceContext

__all__ = ["Actor", "ServiceContext"]
