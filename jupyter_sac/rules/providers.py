"""LLM provider presets: where the credential proxy sends an agent's model calls.

Every preset speaks the Anthropic Messages API (the claude CLI's only protocol);
they differ in base URL, default model and how the key is presented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

AuthStyle = Literal["x-api-key", "bearer", "both"]


@dataclass(frozen=True)
class ProviderPreset:
    name: str
    label: str
    base_url: str  # empty for "custom": the agent supplies it
    default_model: str
    auth: AuthStyle
    docs: str = ""


PRESETS: dict[str, ProviderPreset] = {
    p.name: p
    for p in [
        ProviderPreset(
            "anthropic",
            "Anthropic",
            "https://api.anthropic.com",
            "claude-sonnet-4-5",
            "x-api-key",
            "https://docs.anthropic.com",
        ),
        ProviderPreset(
            "openrouter",
            "OpenRouter",
            "https://openrouter.ai/api",
            "anthropic/claude-sonnet-4.5",
            "bearer",
            "https://openrouter.ai/docs",
        ),
        ProviderPreset(
            "glm",
            "GLM (ZhiPu)",
            "https://open.bigmodel.cn/api/anthropic",
            "glm-4.6",
            "bearer",
            "https://docs.bigmodel.cn",
        ),
        ProviderPreset(
            "qwen",
            "Qwen (DashScope)",
            "https://dashscope.aliyuncs.com/apps/anthropic",
            "qwen3-coder-plus",
            "bearer",
            "https://help.aliyun.com/zh/model-studio",
        ),
        ProviderPreset(
            "custom", "Custom Anthropic-compatible endpoint", "", "claude-sonnet-4-5", "both"
        ),
    ]
}


class ProviderError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def validate_base_url(url: str) -> str:
    """An http(s) URL without credentials, query or fragment; trailing slash removed."""
    if not isinstance(url, str) or len(url) > 2048:
        raise ProviderError("base_url", "expected a URL string")
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # "http://[x": an IPv6 host left open (a 500 before)
        raise ProviderError("base_url", "expected an http:// or https:// URL with a host") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProviderError("base_url", "expected an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ProviderError("base_url", "must not contain credentials; use the provider key field")
    if parts.query or parts.fragment:
        raise ProviderError("base_url", "must not contain a query or fragment")
    return url.strip().rstrip("/")


def upstream_base_url(provider: str, agent_base_url: str | None, overrides: dict[str, str]) -> str:
    """Base URL for an agent's calls: operator override, then preset, then the agent's own."""
    if provider in overrides:
        return overrides[provider].rstrip("/")
    preset = PRESETS[provider]
    if provider == "custom" or not preset.base_url:
        if not agent_base_url:
            raise ProviderError("base_url", "the custom provider needs a base_url")
        return agent_base_url
    return preset.base_url


def auth_headers(provider: str, key: str) -> dict[str, str]:
    style = PRESETS[provider].auth
    headers: dict[str, str] = {}
    if style in ("x-api-key", "both"):
        headers["x-api-key"] = key
    if style in ("bearer", "both"):
        headers["Authorization"] = f"Bearer {key}"
    return headers
