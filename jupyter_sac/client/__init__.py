"""Drive SAC agents from Python: ``Client`` (blocking) and ``AsyncClient``.

Inside any of your agents' servers, ``Client()`` finds the hub and a token in the
environment; elsewhere pass ``url`` (the hub's address) and ``token`` (from
/hub/token). See docs/notebooks.md.
"""

from ._async import Answer, AsyncAgent, AsyncClient, AsyncTask, ExecResult
from ._sync import Agent, Client, Subscription, Task, request_token
from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    SacError,
    SacTimeout,
    ServerError,
    TooLarge,
    Unauthorized,
)

__all__ = [
    "Agent",
    "Answer",
    "AsyncAgent",
    "AsyncClient",
    "AsyncTask",
    "BadRequest",
    "Client",
    "Conflict",
    "ExecResult",
    "Forbidden",
    "NotFound",
    "SacError",
    "SacTimeout",
    "ServerError",
    "Subscription",
    "Task",
    "TooLarge",
    "Unauthorized",
    "request_token",
]
