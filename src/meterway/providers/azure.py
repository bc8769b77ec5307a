"""Azure OpenAI: the OpenAI format behind Azure's URL shape and key header.

`azure/<deployment>` names an Azure *deployment*, which goes into the path; the API version goes
into the query string. Azure ignores the body's `model`, so the body is handled as for OpenAI.
"""

from __future__ import annotations

from collections.abc import Mapping

from yarl import URL

from meterway.config.secret import Secret
from meterway.providers.base import Api
from meterway.providers.openai import _PATHS, OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"  # the latest generally available data-plane version


class AzureProvider(OpenAIProvider):
    family = "azure"

    def __init__(
        self,
        *,
        label: str,
        upstream_model: str,
        api_base: str,
        api_key: Secret | None,
        api_version: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.api_version = api_version or DEFAULT_API_VERSION
        super().__init__(
            label=label, upstream_model=upstream_model, api_base=api_base, api_key=api_key, extra_headers=extra_headers
        )

    def _build_urls(self, base: str) -> dict[Api, URL]:
        root = f"{base}/openai/deployments/{self.upstream_model}"
        return {api: URL(root + path).with_query({"api-version": self.api_version}) for api, path in _PATHS.items()}

    def _auth_headers(self, api_key: Secret | None) -> dict[str, str]:
        return {"api-key": api_key.reveal()} if api_key else {}
