"""Provider prefixes, as LiteLLM users write them, resolved to one provider family each.

A prefix is one row of data: the family that serves it (its module's class: an `Endpoint` and its
translation), its default base URL (None: `api_base` is required) and the environment variables
LiteLLM users already set for its key, base URL and API version. An OpenAI-compatible server is a
row, not code. The environment is the one config loading passes in, never read here on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meterway.config.secret import Secret
from meterway.errors import ConfigError
from meterway.providers import bedrock
from meterway.providers.anthropic import DEFAULT_API_BASE as ANTHROPIC_BASE
from meterway.providers.anthropic import AnthropicProvider
from meterway.providers.azure import AzureProvider
from meterway.providers.base import Api, Provider
from meterway.providers.cohere import DEFAULT_API_BASE as COHERE_BASE
from meterway.providers.cohere import CohereProvider
from meterway.providers.common import HttpProvider
from meterway.providers.completions_adapter import CompletionsAdapter
from meterway.providers.gemini import DEFAULT_API_BASE as GEMINI_BASE
from meterway.providers.gemini import GeminiProvider
from meterway.providers.messages_adapter import MessagesAdapter
from meterway.providers.mock import MockProvider
from meterway.providers.openai import MORE_PATHS, OpenAIProvider
from meterway.providers.openai import PATHS as OPENAI_PATHS
from meterway.providers.responses_adapter import ChatFromResponses, ResponsesAdapter
from meterway.providers.vertex import PLACEHOLDER_BASE as VERTEX_BASE
from meterway.providers.vertex import VertexGeminiProvider


@dataclass(frozen=True, slots=True)
class Alias:
    # the family that serves it (MockProvider: in process, no api_base; Bedrock: built from its aws_* settings)
    family: type[HttpProvider] | type[bedrock.BedrockProvider]
    api_base: str | None  # default base URL; None means api_base must be configured
    key_env: tuple[str, ...] = ()
    base_env: tuple[str, ...] = ()
    base_suffix: str = ""  # appended to a configured api_base that lacks it (Ollama's /v1)
    version_env: tuple[str, ...] = ()  # the API version when the deployment sets none (Azure's)
    responses: bool = False  # the service speaks OpenAI's Responses API (else: bridged over its chat)


ALIASES: Mapping[str, Alias] = {
    "openai": Alias(
        OpenAIProvider,
        "https://api.openai.com/v1",
        ("OPENAI_API_KEY",),
        ("OPENAI_API_BASE", "OPENAI_BASE_URL"),
        responses=True,
    ),
    "text-completion-openai": Alias(
        OpenAIProvider, "https://api.openai.com/v1", ("OPENAI_API_KEY",), ("OPENAI_API_BASE",)
    ),
    "custom_openai": Alias(OpenAIProvider, None, ("OPENAI_API_KEY",)),
    "openai_like": Alias(OpenAIProvider, None),
    "hosted_vllm": Alias(OpenAIProvider, None, ("HOSTED_VLLM_API_KEY",), ("HOSTED_VLLM_API_BASE",)),
    "openrouter": Alias(
        OpenAIProvider, "https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY", "OR_API_KEY"), ("OPENROUTER_API_BASE",)
    ),
    "groq": Alias(OpenAIProvider, "https://api.groq.com/openai/v1", ("GROQ_API_KEY",), ("GROQ_API_BASE",)),
    "together_ai": Alias(
        OpenAIProvider, "https://api.together.xyz/v1", ("TOGETHERAI_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHER_API_KEY")
    ),
    "deepseek": Alias(OpenAIProvider, "https://api.deepseek.com/v1", ("DEEPSEEK_API_KEY",), ("DEEPSEEK_API_BASE",)),
    "mistral": Alias(OpenAIProvider, "https://api.mistral.ai/v1", ("MISTRAL_API_KEY",), ("MISTRAL_API_BASE",)),
    "fireworks_ai": Alias(
        OpenAIProvider,
        "https://api.fireworks.ai/inference/v1",
        ("FIREWORKS_AI_API_KEY", "FIREWORKS_API_KEY", "FIREWORKSAI_API_KEY"),
    ),
    "xai": Alias(OpenAIProvider, "https://api.x.ai/v1", ("XAI_API_KEY",), ("XAI_API_BASE",)),
    "perplexity": Alias(OpenAIProvider, "https://api.perplexity.ai", ("PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY")),
    "deepinfra": Alias(OpenAIProvider, "https://api.deepinfra.com/v1/openai", ("DEEPINFRA_API_KEY",)),
    "cerebras": Alias(OpenAIProvider, "https://api.cerebras.ai/v1", ("CEREBRAS_API_KEY",)),
    "nvidia_nim": Alias(
        OpenAIProvider, "https://integrate.api.nvidia.com/v1", ("NVIDIA_NIM_API_KEY",), ("NVIDIA_NIM_API_BASE",)
    ),
    "lm_studio": Alias(OpenAIProvider, "http://localhost:1234/v1", ("LM_STUDIO_API_KEY",), ("LM_STUDIO_API_BASE",)),
    "ollama": Alias(OpenAIProvider, "http://localhost:11434", (), ("OLLAMA_API_BASE",), "/v1"),
    "ollama_chat": Alias(OpenAIProvider, "http://localhost:11434", (), ("OLLAMA_API_BASE",), "/v1"),
    "azure": Alias(
        AzureProvider,
        None,
        ("AZURE_API_KEY", "AZURE_OPENAI_API_KEY"),
        ("AZURE_API_BASE", "AZURE_OPENAI_ENDPOINT"),
        version_env=("AZURE_API_VERSION",),
        responses=True,
    ),
    "anthropic": Alias(
        AnthropicProvider, ANTHROPIC_BASE, ("ANTHROPIC_API_KEY",), ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL")
    ),
    "cohere": Alias(CohereProvider, COHERE_BASE, ("COHERE_API_KEY", "CO_API_KEY"), ("COHERE_API_BASE",)),
    "cohere_chat": Alias(CohereProvider, COHERE_BASE, ("COHERE_API_KEY", "CO_API_KEY"), ("COHERE_API_BASE",)),
    "gemini": Alias(GeminiProvider, GEMINI_BASE, ("GEMINI_API_KEY", "GOOGLE_API_KEY"), ("GEMINI_API_BASE",)),
    # built by `config.load` with its credentials, project and location (`providers.vertex.build`)
    "vertex_ai": Alias(VertexGeminiProvider, VERTEX_BASE),
    "bedrock": Alias(bedrock.BedrockProvider, None),  # the base follows the region: bedrock.BedrockProvider
    "mock": Alias(MockProvider, None),
}

VERTEX = "vertex_ai"


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


def _first_env(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


@dataclass(frozen=True, slots=True)
class Resolved:
    family: str  # the prefix, e.g. "groq": what the ledger and the UI show
    upstream_model: str
    api_base: str | None
    api_key: Secret | None
    api_version: str | None = None


def resolve(model: str, api_base: str | None, api_key: Secret | None, *, env: Mapping[str, str]) -> Resolved:
    """Fills in what LiteLLM users leave out: the provider's base URL, key and API version from
    `env`, the environment config loading was given."""
    family, upstream = split_model(model)
    alias = ALIASES[family]
    if alias.family is bedrock.BedrockProvider:
        upstream = bedrock.model_id(upstream)  # LiteLLM's `converse/`, `invoke/` name a route, not the model
    base = api_base or _first_env(env, alias.base_env) or alias.api_base
    if base and alias.base_suffix and not base.rstrip("/").endswith(alias.base_suffix):
        base = base.rstrip("/") + alias.base_suffix
    if api_key is None:
        env_key = _first_env(env, alias.key_env)
        api_key = Secret(env_key) if env_key else None
    if base is None and alias.family not in (MockProvider, bedrock.BedrockProvider):
        raise ConfigError(f"provider '{family}' needs api_base (no public default)", param="api_base")
    return Resolved(family, upstream, base, api_key, _first_env(env, alias.version_env))


RESPONSES_MODE = "responses"  # model_info.mode of a Responses-only model, as LiteLLM marks it


def _routes(alias: Alias, mode: str | None) -> tuple[Api, ...] | None:
    """The routes an OpenAI-format deployment serves: the Responses API only where its service
    speaks it, and nothing else for a Responses-only model. None: all its family's (other families)."""
    if not issubclass(alias.family, OpenAIProvider):
        return None
    if mode == RESPONSES_MODE:
        return (Api.RESPONSES,)
    served: tuple[Api, ...] = (*OPENAI_PATHS, *MORE_PATHS)  # type: ignore[arg-type]  # all Api keys
    return (*served, Api.RESPONSES) if alias.responses else served


def build(
    resolved: Resolved,
    *,
    label: str,
    api_version: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    mode: str | None = None,
    params: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Provider:
    """The deployment's provider: its row's family, given its resolved URL, key and headers.
    `mode` is the deployment's `model_info.mode` (`responses`: a Responses-only model); `params`
    its litellm_params and `env` the environment config loading was given, for the families that
    read settings of their own (Bedrock's `aws_*`)."""
    alias = ALIASES[resolved.family]
    family = alias.family
    if family is MockProvider:
        return MockProvider(label=label, upstream_model=resolved.upstream_model)
    if resolved.family == VERTEX:
        raise ConfigError("a vertex_ai deployment is built with its credentials (providers.vertex.build)")
    if family is bedrock.BedrockProvider:
        return bedrock.build(
            label=label,
            upstream_model=resolved.upstream_model,
            api_base=resolved.api_base,
            params=params or {},
            env=env or {},
            extra_headers=extra_headers,
        )
    assert issubclass(family, HttpProvider)  # the other families are built above
    return family(
        label=label,
        upstream_model=resolved.upstream_model,
        api_base=resolved.api_base,
        api_key=resolved.api_key,
        api_version=api_version or resolved.api_version,
        extra_headers=extra_headers,
        routes=_routes(alias, mode),
    )


def for_completions(provider: Provider) -> Provider | None:
    """The provider that serves `/v1/completions` when the deployment's own does not: an adapter
    over its chat (None: its own serves it, or it has no chat either)."""
    if provider.supports(Api.COMPLETIONS) or not provider.supports(Api.CHAT):
        return None
    return CompletionsAdapter(provider)


def for_messages(provider: Provider) -> Provider:
    """The provider that serves `/v1/messages` for a deployment: its own, or an adapter over its chat."""
    return provider if provider.supports(Api.MESSAGES) else MessagesAdapter(provider)


def for_responses(provider: Provider) -> Provider:
    """The provider that serves `/v1/responses` for a deployment: its own where the upstream speaks
    the Responses API, else an adapter over its chat."""
    return provider if provider.supports(Api.RESPONSES) else ResponsesAdapter(provider)


def for_chat(provider: Provider) -> Provider:
    """The provider that serves the OpenAI routes: its own, or, for a Responses-only model
    (`model_info.mode: responses`), chat carried over its Responses API."""
    if provider.supports(Api.CHAT) or not provider.supports(Api.RESPONSES):
        return provider
    return ChatFromResponses(provider)
