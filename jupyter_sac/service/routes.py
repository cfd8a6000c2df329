"""The path parts every route table of the `sac` service matches, defined once.

Each is one regex group (tornado passes it to the handler as an argument).
"""

from __future__ import annotations

# A JupyterHub user name: anything but a slash (the hub allows more than we check).
USER = r"([^/]+)"
# An agent's slug (a JupyterHub safe server name; the Slug schema of openapi.yaml is the rule).
SLUG = r"([a-z0-9-]+)"
# A provider preset's name (providers.PRESETS).
PROVIDER = r"([a-z0-9-]+)"
# An opaque id or name a handler looks up itself (HITL request ids, skill ids,
# installed skills, workspace paths' first part): anything but a slash.
NAME = r"([^/]+)"
# A JupyterHub group's name.
GROUP = r"([^/]+)"
# A workspace file's path (slashes included; workspace rules check it).
FILE = r"(.+)"
# A HITL request's id as the admin pages link it (a UUID).
UUID = r"([0-9a-f-]+)"
