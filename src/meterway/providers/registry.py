"""Provider prefixes, as LiteLLM users write them, resolved to one provider module each.

An OpenAI-compatible alias is data, not code: its default base URL (None: `api_base` is required)
and the environment variables LiteLLM users already set for its key and base URL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from meterway.config.secret import Secret
from meterway.errors import ConfigError
from meterway.providers.anthropic import DEFAULT_API_BASE as ANTHROPIC_BASE
from meterway.providers.anthropic import AnthropicProvider
from meterway.providers.azure import AzureProvider
from meterway.providers.base import Api, Provider
from meterway.providers.cohere import DEFAULT_API_BASE as COHERE_BASE
from meterway.providers.cohere import CohereProvider
from meterway.providers.gemini import DEFAULT_API_BASE as GEMINI_BASE
from meterway.providers.gemini import GeminiProvider
from meterway.providers.messages_adapter import MessagesAdapter
from meterway.providers.mock import MockProvider
from meterway.providers.openai import OpenAIProvider


@dataclass(frozen=True, slots=True)
class Alias:
    module: str  # "openai", "azure", "anthropic", "cohere", "gemini" or "mock": the module that serves it
    api_base: str | None  # default base URL; None means api_base must be configured
    key_env: tuple[str, ...] = ()
    base_env: tuple[str, ...] = ()
    base_suffix: str = ""  # appended to a configured api_base that lacks it (Ollama's /v1)


ALIASES: Mapping[str, Alias] = {
    "openai": Alias("openai", "https://api.openai.com/v1", ("OPENAI_API_KEY",), ("OPENAI_API_BASE", "OPENAI_BASE_URL")),
    "text-completion-openai": Alias("openai", "https://api.openai.com/v1", ("OPENAI_API_KEY",), ("OPENAI_API_BASE",)),
    "custom_openai": Alias("openai", None, ("OPENAI_API_KEY",)),
    "openai_like": Alias("openai", None),
    "hosted_vllm": Alias("openai", None, ("HOSTED_VLLM_API_KEY",), ("HOSTED_VLLM_API_BASE",)),
    "openrouter": Alias(
        "openai", "https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY", "OR_API_KEY"), ("OPENROUTER_API_BASE",)
    ),
    "groq": Alias("openai", "https://api.groq.com/openai/v1", ("GROQ_API_KEY",), ("GROQ_API_BASE",)),
    "together_ai": Alias(
        "openai", "https://api.together.xyz/v1", ("TOGETHERAI_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHER_API_KEY")
    ),
    "deepseek": Alias("openai", "https://api.deepseek.com/v1", ("DEEPSEEK_API_KEY",), ("DEEPSEEK_API_BASE",)),
    "mistral": Alias("openai", "https://api.mistral.ai/v1", ("MISTRAL_API_KEY",), ("MISTRAL_API_BASE",)),
    "fireworks_ai": Alias(
        "openai",
        "https://api.fireworks.ai/inference/v1",
        ("FIREWORKS_AI_API_KEY", "FIREWORKS_API_KEY", "FIREWORKSAI_API_KEY"),
    ),
    "xai": Alias("openai", "https://api.x.ai/v1", ("XAI_API_KEY",), ("XAI_API_BASE",)),
    "perplexity": Alias("openai", "https://api.perplexity.ai", ("PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY")),
    "deepinfra": Alias("openai", "https://api.deepinfra.com/v1/openai", ("DEEPINFRA_API_KEY",)),
    "cerebras": Alias("openai", "https://api.cerebras.ai/v1", ("CEREBRAS_API_KEY",)),
    "nvidia_nim": Alias(
        "openai", "https://integrate.api.nvidia.com/v1", ("NVIDIA_NIM_API_KEY",), ("NVIDIA_NIM_API_BASE",)
    ),
    "lm_studio": Alias("openai", "http://localhost:1234/v1", ("LM_STUDIO_API_KEY",), ("LM_STUDIO_API_BASE",)),
    "ollama": Alias("openai", "http://localhost:11434", (), ("OLLAMA_API_BASE",), "/v1"),
    "ollama_chat": Alias("openai", "http://localhost:11434", (), ("OLLAMA_API_BASE",), "/v1"),
    "azure": Alias(
        "azure", None, ("AZURE_API_KEY", "AZURE_OPENAI_API_KEY"), ("AZURE_API_BASE", "AZURE_OPENAI_ENDPOINT")
    ),
    "anthropic": Alias(
        "anthropic", ANTHROPIC_BASE, ("ANTHROPIC_API_KEY",), ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL")
    ),
    "cohere": Alias("cohere", COHERE_BASE, ("COHERE_API_KEY", "CO_API_KEY"), ("COHERE_API_BASE",)),
    "cohere_chat": Alias("cohere", COHERE_BASE, ("COHERE_API_KEY", "CO_API_KEY"), ("COHERE_API_BASE",)),
    "gemini": Alias("gemini", GEMINI_BASE, ("GEMINI_API_KEY", "GOOGLE_API_KEY"), ("GEMINI_API_BASE",)),
    "mock": Alias("mock", None),
}


def split_model(model: str) -> tuple[str, str]:
    """`openai/gpt-4o` -> ("openai", "gpt-4o"). A bare name is OpenAI's, or Anthropic's for `claude-*`,
    as LiteLLM infers it. `hosted_vllm/meta-llama/Llama-3` keeps everything after the first slash."""
    prefix, sep, rest = model.partition("/")
    if sep and prefix in ALIASES and rest:
        return prefix, rest
    if sep:
        known = ", ".join(sorted(ALIASES))
        raise ConfigError(f"unknown provider '{prefix}' in '{model}'; supported providers: {known}")
    return ("anthropic" if model.startswith("claude") else "openai"), model


def _first_env(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


@dataclass(frozen=True, slots=True)
class Resolved:
    family: str
    upstream_model: str
    api_base: str | None
    api_key: Secret | None


def resolve(model: str, api_base: str | None, api_key: Secret | None) -> Resolved:
    """Fills in what LiteLLM users leave out: the provider's base URL and key from its environment."""
    family, upstream = split_model(model)
    alias = ALIASES[family]
    base = api_base or _first_env(alias.base_env) or alias.api_base
    if base and alias.base_suffix and not base.rstrip("/").endswith(alias.base_suffix):
        base = base.rstrip("/") + alias.base_suffix
    if api_key is None:
        env_key = _first_env(alias.key_env)
        api_key = Secret(env_key) if env_key else None
    if base is None and alias.module not in ("mock",):
        raise ConfigError(f"provider '{family}' needs api_base (no public default)", param="api_base")
    return Resolved(family, upstream, base, api_key)


def build(
    resolved: Resolved,
    *,
    label: str,
    api_version: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> Provider:
    module = ALIASES[resolved.family].module
    provider: Provider
    if module == "mock":
        provider = MockProvider(label=label, upstream_model=resolved.upstream_model)
    elif module == "anthropic":
        provider = AnthropicProvider(
            label=label,
            upstream_model=resolved.upstream_model,
            api_base=resolved.api_base,
            api_key=resolved.api_key,
            extra_headers=extra_headers,
        )
    elif module in ("cohere", "gemini"):
        family = CohereProvider if module == "cohere" else GeminiProvider
        provider = family(
            label=label,
            upstream_model=resolved.upstream_model,
            api_base=resolved.api_base,
            api_key=resolved.api_key,
            extra_headers=extra_headers,
        )
    elif module == "azure":
        assert resolved.api_base is not None
        provider = AzureProvider(
            label=label,
            upstream_model=resolved.upstream_model,
            api_base=resolved.api_base,
            api_key=resolved.api_key,
            api_version=api_version or os.environ.get("AZURE_API_VERSION"),
            extra_headers=extra_headers,
        )
    else:
        assert resolved.api_base is not None
        provider = OpenAIProvider(
            label=label,
            upstream_model=resolved.upstream_model,
            api_base=resolved.api_base,
            api_key=resolved.api_key,
            extra_headers=extra_headers,
        )
    return provider


def for_messages(provider: Provider) -> Provider:
    """The provider that serves `/v1/messages` for a deployment: its own, or an adapter over its chat."""
    return provider if provider.supports(Api.MESSAGES) else MessagesAdapter(provider)
