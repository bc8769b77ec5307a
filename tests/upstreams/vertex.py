"""A stand-in for Google Vertex AI that checks what Vertex checks: the caller's access token.

It is its own OAuth token endpoint, as `token_uri` of the service accounts it makes
(`service_account`): each has a fresh RSA key, whose public half the stand-in keeps; `POST /token`
takes google-auth's JWT-bearer grant, verifies the assertion's RS256 signature with that key, its
issuer, audience (its own URL or Google's, which google-auth names
whatever the token_uri), scope and times, and issues an access token with `expires_in` (per account, so a
test can make one short-lived). Every model call must carry a token it issued and that has not
expired, or it gets Google's 401 (`{"error": {"code": 401, "status": "UNAUTHENTICATED"}}`).

Model calls, at `/v1/projects/{p}/locations/{l}/publishers/{google|anthropic}/models/{model}:{method}`:
Gemini's `generateContent` / `streamGenerateContent?alt=sse` (answered as `ProviderStandIn`'s Gemini
API), `predict` for embeddings (`predictions[].embeddings.values` and `statistics.token_count`),
Claude's `count-tokens` model (`rawPredict`, the model named in the body),
and Claude's `rawPredict` / `streamRawPredict`: Anthropic's Messages body with
`anthropic_version: "vertex-2023-10-16"` and no `model`, answered as `StandIn`'s Anthropic API. The
scripts of `StandIn` (a 429, a stream cut short) apply as everywhere.
"""

from __future__ import annotations

import base64
import itertools
import json as jsonlib
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.upstreams.providers import ProviderStandIn
from tests.upstreams.standin import _Call, count_words, embedding_for

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # the audience google-auth signs for, whatever token_uri is
MODEL_PATH = "/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{target}"


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pem_of(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def unknown_private_key() -> str:
    """A service-account key no token endpoint knows: a JWT it signs fails verification."""
    return pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@dataclass
class Account:
    email: str
    public_key: rsa.RSAPublicKey
    lifetime: int  # seconds, the `expires_in` of its tokens


class VertexStandIn(ProviderStandIn):
    """Vertex AI and its token endpoint on one port; `issued` lists the tokens minted, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.accounts: dict[str, Account] = {}
        self.issued: list[str] = []
        self._tokens: dict[str, float] = {}  # token -> time.monotonic() of its expiry
        self._token_ids = itertools.count(1)
        self._auth_lock = threading.Lock()

    @property
    def token_uri(self) -> str:
        return self.url("/token")

    def service_account(
        self,
        email: str = "meterway@standin-project.iam.gserviceaccount.com",
        *,
        lifetime: int = 3600,
        project: str = "standin-project",
    ) -> dict[str, Any]:
        """A service account's key file (JSON), its key known to this stand-in's token endpoint."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = pem_of(key)
        with self._auth_lock:
            self.accounts[email] = Account(email, key.public_key(), lifetime)
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": f"key-{len(self.accounts)}",
            "private_key": pem,
            "client_email": email,
            "client_id": "1234567890",
            "token_uri": self.token_uri,
        }

    def tokens_for(self, email: str) -> list[str]:
        return [t for t in self.issued if t.startswith(f"ya29.{email.split('@')[0]}.")]

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/token", self._route(self._token))
        router.add_post(MODEL_PATH, self._route(self._vertex))
        super()._add_routes(router)

    # ---- the token endpoint ----------------------------------------------------------------------

    async def _oauth_error(self, call: _Call, error: str, description: str) -> web.StreamResponse:
        return await self._plain_json(call, 400, {"error": error, "error_description": description})

    async def _token(self, call: _Call) -> web.StreamResponse:
        form = {k: v[0] for k, v in parse_qs(call.record.body.decode()).items()}
        if form.get("grant_type") != JWT_GRANT or not form.get("assertion"):
            return await self._oauth_error(call, "unsupported_grant_type", "Invalid grant_type.")
        try:
            head_b64, claims_b64, signature_b64 = form["assertion"].split(".")
            header, claims = jsonlib.loads(_b64url(head_b64)), jsonlib.loads(_b64url(claims_b64))
        except ValueError:
            return await self._oauth_error(call, "invalid_grant", "Invalid JWT.")
        with self._auth_lock:
            account = self.accounts.get(claims.get("iss", ""))
        if account is None or header.get("alg") != "RS256":
            return await self._oauth_error(call, "invalid_grant", "Invalid JWT Signature.")
        try:
            account.public_key.verify(
                _b64url(signature_b64), f"{head_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return await self._oauth_error(call, "invalid_grant", "Invalid JWT Signature.")
        now = time.time()
        if (
            claims.get("aud") not in (self.token_uri, GOOGLE_TOKEN_URI)
            or CLOUD_PLATFORM not in str(claims.get("scope", "")).split()
        ):
            return await self._oauth_error(call, "invalid_scope", "Invalid audience or scope.")
        if not (claims.get("iat", 0) - 60 <= now < claims.get("exp", 0)):
            return await self._oauth_error(call, "invalid_grant", "Invalid JWT: token must be a short-lived token.")
        token = f"ya29.{account.email.split('@')[0]}.{next(self._token_ids)}"
        with self._auth_lock:
            self._tokens[token] = time.monotonic() + account.lifetime
            self.issued.append(token)
        body = {"access_token": token, "expires_in": account.lifetime, "token_type": "Bearer"}
        return await self._plain_json(call, 200, body)

    # ---- models --------------------------------------------------------------------------------------

    async def _google_error(self, call: _Call, code: int, status: str, message: str) -> web.StreamResponse:
        return await self._plain_json(call, code, {"error": {"code": code, "message": message, "status": status}})

    def _valid(self, authorization: str) -> bool:
        token = authorization[7:] if authorization.lower().startswith("bearer ") else ""
        with self._auth_lock:
            expires = self._tokens.get(token)
        return expires is not None and time.monotonic() < expires

    async def _vertex(self, call: _Call) -> web.StreamResponse:
        if not self._valid(call.record.headers.get("authorization", "")):
            return await self._google_error(
                call,
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                "other valid authentication credential.",
            )
        info = call.request.match_info
        model, _, method = info["target"].partition(":")
        if info["publisher"] == "google" and method in ("generateContent", "streamGenerateContent"):
            return await self._gemini_answer(call, model, method)
        if info["publisher"] == "google" and method == "predict":
            return await self._predict(call)
        if info["publisher"] == "anthropic" and model == "count-tokens" and method == "rawPredict":
            return await self._claude_count(call)
        if info["publisher"] == "anthropic" and method in ("rawPredict", "streamRawPredict"):
            return await self._claude(call, model, method)
        return await self._google_error(call, 404, "NOT_FOUND", f"Publisher model {model}:{method} was not found.")

    async def _predict(self, call: _Call) -> web.StreamResponse:
        instances = call.payload.get("instances")
        if not isinstance(instances, list) or not all(
            isinstance(i, dict) and isinstance(i.get("content"), str) for i in instances
        ):
            return await self._google_error(call, 400, "INVALID_ARGUMENT", "instances[].content is required.")
        dimensions = (call.payload.get("parameters") or {}).get("outputDimensionality") or 8
        predictions = [
            {
                "embeddings": {
                    "values": embedding_for(i["content"], dimensions),
                    "statistics": {"token_count": count_words(i["content"]), "truncated": False},
                }
            }
            for i in instances
        ]
        tokens = sum(count_words(i["content"]) for i in instances)
        body = {
            "predictions": predictions,
            "metadata": {"billableCharacterCount": sum(len(i["content"]) for i in instances)},
        }
        return await self._json(call, body, usage={"prompt_tokens": tokens})

    async def _claude(self, call: _Call, model: str, method: str) -> web.StreamResponse:
        payload = call.payload
        if call.json_error is not None or payload.get("anthropic_version") != VERTEX_ANTHROPIC_VERSION:
            return await self._anthropic_error(
                call, 400, "invalid_request_error", f"anthropic_version: must be {VERTEX_ANTHROPIC_VERSION}"
            )
        if "model" in payload:
            return await self._anthropic_error(
                call, 400, "invalid_request_error", "model: Extra inputs are not permitted"
            )
        if (method == "streamRawPredict") != (payload.get("stream") is True):
            return await self._anthropic_error(call, 400, "invalid_request_error", "stream must match the method")
        call.payload = {**payload, "model": model}  # the answer names the URL's model; the record stays as sent
        return await self._messages_answer(call)

    async def _claude_count(self, call: _Call) -> web.StreamResponse:
        """Vertex's count-tokens model: the model counted against is named in the body."""
        payload = call.payload
        if not isinstance(payload.get("model"), str) or not isinstance(payload.get("messages"), list):
            return await self._anthropic_error(call, 400, "invalid_request_error", "model and messages are required")
        return await self._json(call, {"input_tokens": self._anthropic_input_tokens(payload)})
