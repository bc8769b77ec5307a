"""Azure OpenAI: the OpenAI format behind Azure's URL shape and key header.

`azure/<deployment>` names an Azure *deployment*, which goes into the path; the API version goes
into the query string. Azure ignores the body's `model`, so the body is handled as for OpenAI:
only the endpoint differs.

The Responses API lives apart from the deployments, in Azure's v1 API (`/openai/v1/responses`,
no api-version): its body's `model` names the deployment, which the OpenAI provider writes there
anyway (the upstream model of `azure/<deployment>` is the deployment's name).

Image generation is a deployment's route as chat is (`/openai/deployments/{d}/images/generations`),
and so are image edits (`/images/edits`, a multipart upload rebuilt with the deployment's name).
"""

from __future__ import annotations

from meterway.providers.base import Api
from meterway.providers.common import Endpoint
from meterway.providers.openai import PATHS, RESPONSES_PATH, OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"  # the latest generally available data-plane version

ENDPOINT = Endpoint(
    # images: DALL·E and gpt-image-1 deployments; edits on gpt-image-1's (Azure has no variations)
    {**PATHS, Api.IMAGES: "/images/generations", Api.IMAGE_EDITS: "/images/edits"},
    root="/openai/deployments/{model}",
    auth=("api-key", ""),
    query={"api-version": "{api_version}"},
    api_version=DEFAULT_API_VERSION,
    own_paths={Api.RESPONSES: "/openai/v1" + RESPONSES_PATH},
)


class AzureProvider(OpenAIProvider):
    family = "azure"
    endpoint = ENDPOINT
