"""`GET /openapi.json`: the management API described from the same structs that decode its bodies,
so the document cannot drift from what the handlers accept."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson

from meterway import __version__
from meterway.api import billing as b
from meterway.api import heads as h
from meterway.api import management as m
from meterway.api import tenancy as t
from meterway.api import webhook_admin as w
from meterway.providers import audio
from meterway.routing import runtime as r

Query = tuple[str, ...]

# (method, path, summary, request body type or None, query parameters)
OPERATIONS: list[tuple[str, str, str, type[msgspec.Struct] | None, Query]] = [
    ("POST", "/key/generate", "Create a virtual key; the key is shown once", m.KeyGenerateRequest, ()),
    ("GET", "/key/info", "A key's settings (never the key itself)", None, ("key",)),
    ("POST", "/key/update", "Change a key's settings", m.KeyUpdateRequest, ()),
    ("POST", "/key/block", "Refuse a key until it is unblocked", m.KeyRefRequest, ()),
    ("POST", "/key/unblock", "Accept a blocked key again", m.KeyRefRequest, ()),
    ("POST", "/key/delete", "Delete keys", m.KeyDeleteRequest, ()),
    ("POST", "/key/regenerate", "Replace a key; the old one works for grace_period", m.KeyRegenerateRequest, ()),
    ("GET", "/key/list", "Keys, a page at a time", None, ("page", "size", "user_id", "team_id", "return_full_object")),
    ("POST", "/team/new", "Create a team", t.TeamRequest, ()),
    ("GET", "/team/info", "A team, its members and keys", None, ("team_id",)),
    ("POST", "/team/update", "Change a team", t.TeamRequest, ()),
    ("POST", "/team/delete", "Delete teams", t.IdsRequest, ()),
    ("GET", "/team/list", "All teams", None, ()),
    ("POST", "/team/member_add", "Add or re-role members", t.MemberAddRequest, ()),
    ("POST", "/team/member_delete", "Remove a member", t.MemberDeleteRequest, ()),
    ("POST", "/user/new", "Create a user (and a key of its own)", t.UserRequest, ()),
    ("GET", "/user/info", "A user and its keys", None, ("user_id",)),
    ("POST", "/user/update", "Change a user", t.UserRequest, ()),
    ("POST", "/user/delete", "Delete users", t.IdsRequest, ()),
    ("GET", "/user/list", "Users, a page at a time", None, ("page", "page_size")),
    ("POST", "/customer/new", "Create a customer (also under /end_user/)", t.CustomerRequest, ()),
    ("GET", "/customer/info", "A customer", None, ("end_user_id",)),
    ("POST", "/customer/update", "Change a customer", t.CustomerRequest, ()),
    ("POST", "/customer/delete", "Delete customers", t.IdsRequest, ()),
    ("GET", "/customer/list", "All customers", None, ()),
    (
        "GET",
        "/spend/logs",
        "Ledger rows, newest first",
        None,
        (
            "api_key",
            "user_id",
            "request_id",
            "start_date",
            "end_date",
            "team_id",
            "customer_id",
            "model",
            "page",
            "page_size",
        ),
    ),
    (
        "GET",
        "/usage",
        "Usage totals by any grouping (JSON, or CSV with format=csv)",
        None,
        ("group_by", "start", "end", "customer_id", "api_key", "user_id", "team_id", "model", "format"),
    ),
    (
        "GET",
        "/global/spend/report",
        "Daily spend per team, customer or key",
        None,
        ("group_by", "start_date", "end_date"),
    ),
    ("GET", "/billing/status", "Billing exports: pending, sent, parked (by reason); ledger quarantine", None, ()),
    ("GET", "/ledger/quarantine", "Ledger rows the database refused, kept whole", None, ("limit", "all")),
    ("POST", "/ledger/reprocess", "Quarantined ledger rows written again", b.LedgerReprocessRequest, ()),
    ("POST", "/billing/reprocess", "Parked billing exports sent again", b.ReprocessRequest, ()),
    ("GET", "/billing/reconcile", "A month's ledger against Lago's events", None, ("period", "customer")),
    ("GET", "/billing/check", "Lago's URL, key and billable metric checked", None, ()),
    ("POST", "/billing/setup", "The billable metric created or completed in Lago", b.SetupRequest, ()),
    ("GET", "/webhooks/stats", "Reported usage: received, accepted, duplicates, rejected; rows and exports", None, ()),
    ("GET", "/webhooks/validate", "Whether reported usage can reach Lago (URL, key, billable metric)", None, ()),
    ("POST", "/webhooks/reprocess", "Parked exports of reported usage sent again", w.WebhookReprocessRequest, ()),
    (
        "POST",
        "/model/new",
        "Add a deployment (STORE_MODEL_IN_DB); its credentials are stored encrypted",
        r.ModelNew,
        (),
    ),
    ("POST", "/model/update", "Change a stored deployment (model_info.id); given fields are merged", r.ModelUpdate, ()),
    ("POST", "/model/delete", "Delete a stored deployment", r.ModelDelete, ()),
    ("GET", "/model/info", "Every deployment, credentials left out", None, ("litellm_model_id",)),
    (
        "GET",
        "/customer/{customer_id}/invoice-preview",
        "A customer's invoice preview for a month (JSON, CSV or HTML)",
        None,
        ("period", "format"),
    ),
]

# Usage reported by another proxy: authenticated by the webhook secret, bodies checked by hand
# (two payload formats, told apart per event; see docs/webhooks.md).
INGEST: list[tuple[str, str]] = [
    ("/webhooks/usage", "Usage of one request (or a list) reported by another proxy; a single event is answered alone"),
    ("/webhooks/usage/batch", 'Usage of many requests: a list or {"events": [...]}, stored whole or not at all'),
]
# Lago's wallet webhooks (prepaid credits): authenticated by Lago's signature, not a key; 404 when
# prepaid credits are off (docs/billing.md, "Keeping readings fresh").
LAGO_WEBHOOK = (
    "/webhooks/lago",
    "Lago's webhooks (wallet transactions, depleted balances): a signed one re-reads the customer's wallets",
)
# OpenAI's Responses API (also without /v1): bodies and answers in OpenAI's shapes, described by
# OpenAI's own spec (openai/openai-openapi), so only named here. A key sees only its own responses.
RESPONSES: list[tuple[str, str, str, Query]] = [
    ("POST", "/v1/responses", "Create a response (plain, streamed, or background); one ledger row", ()),
    ("GET", "/v1/responses/{response_id}", "A response (stream=true: as events); never charged", ("stream",)),
    ("DELETE", "/v1/responses/{response_id}", "Delete a response", ()),
    ("POST", "/v1/responses/{response_id}/cancel", "Cancel a background response still running", ()),
    (
        "GET",
        "/v1/responses/{response_id}/input_items",
        "A response's input items, a page at a time",
        ("limit", "order", "after"),
    ),
    ("POST", "/v1/responses/input_tokens", "The input tokens a request would use; never charged", ()),
]


class Rerank(msgspec.Struct):
    """Cohere's v2 rerank request (`api.heads.RerankRequest`, whose free-form `tags` and
    `metadata` it decodes only when sent, typed here)."""

    model: str
    query: str
    documents: list[str | h.RerankDocument]
    top_n: int | None = None
    return_documents: bool | None = None
    max_tokens_per_doc: int | None = None
    user: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None


class Moderation(msgspec.Struct):
    """OpenAI's moderation request (`api.heads.ModerationRequest`)."""

    input: str | list[str]
    model: str | None = None
    user: str | None = None


# images


class ImageGeneration(msgspec.Struct):
    """OpenAI's image generation request (`api.heads.ImageRequest`, which checks the same bounds)."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=h.IMAGE_PROMPT_MAX)]
    model: str | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=h.IMAGES_MAX)] | None = None
    size: Annotated[str, msgspec.Meta(pattern=r"^(auto|[1-9][0-9]{0,3}x[1-9][0-9]{0,3})$")] | None = None
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    style: Literal["vivid", "natural"] | None = None
    background: Literal["auto", "transparent", "opaque"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    moderation: Literal["auto", "low"] | None = None
    user: str | None = None


# Model endpoints in their providers' shapes whose bodies the gateway decodes whole, so fuzzed:
# Cohere's v2 rerank, as LiteLLM serves it, and OpenAI's moderations.
MODEL_ENDPOINTS: list[tuple[str, str, type[msgspec.Struct]]] = [
    ("/v1/rerank", "Documents ordered by relevance to a query (Cohere's v2 shape); billed per search unit", Rerank),
    ("/v1/moderations", "Whether inputs break a usage policy (OpenAI's shape); recorded, usually free", Moderation),
    # images
    (
        "/v1/images/generations",
        "Images drawn from a prompt (OpenAI's shape); billed per image, per pixel or per token",
        ImageGeneration,
    ),
]


# ---------------------------------------------------------------- audio (OpenAI's)


class Speech(msgspec.Struct):
    """OpenAI's speech request (`api.heads.SpeechRequest`); the answer is the audio's bytes."""

    model: str
    input: str
    voice: str
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] | None = None
    speed: float | None = None
    instructions: str | None = None
    user: str | None = None


_UPLOAD_FIELDS: dict[str, Any] = {
    "file": {"type": "string", "format": "binary", "description": "The audio (flac, mp3, mp4, m4a, ogg, wav, webm)"},
    "model": {"type": "string"},
    "language": {"type": "string"},
    "prompt": {"type": "string"},
    "response_format": {"type": "string", "enum": sorted(audio.TRANSCRIPTION_FORMATS)},
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}},
    "user": {"type": "string"},
}
# multipart/form-data uploads (bounded by general_settings.max_audio_bytes), answered as JSON or text
AUDIO_UPLOADS: list[tuple[str, str]] = [
    ("/v1/audio/transcriptions", "The text of an audio file; billed per second of audio, or by tokens where reported"),
    ("/v1/audio/translations", "An audio file's speech in English; billed per second of audio"),
]
SPEECH_PATH = "/v1/audio/speech"

_IMAGE_FILE: dict[str, Any] = {"type": "string", "format": "binary", "description": "A PNG, JPEG or WebP image"}
_IMAGE_COMMON: dict[str, Any] = {
    "image": _IMAGE_FILE,
    "model": {"type": "string"},
    "n": {"type": "integer", "minimum": 1, "maximum": h.IMAGES_MAX},
    "size": {"type": "string", "pattern": r"^(auto|[1-9][0-9]{0,3}x[1-9][0-9]{0,3})$"},
    "response_format": {"type": "string", "enum": ["url", "b64_json"]},
    "user": {"type": "string"},
}
_IMAGE_EDIT: dict[str, Any] = {
    "type": "object",
    "required": ["image", "prompt"],
    "properties": {
        **_IMAGE_COMMON,
        "mask": {**_IMAGE_FILE, "description": "A PNG whose transparent areas mark where to edit"},
        "prompt": {"type": "string", "minLength": 1, "maxLength": h.IMAGE_PROMPT_MAX},
        "quality": {"type": "string", "enum": ["auto", "standard", "hd", "low", "medium", "high"]},
        "background": {"type": "string", "enum": ["auto", "transparent", "opaque"]},
        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
    },
}
_IMAGE_VARIATION: dict[str, Any] = {"type": "object", "required": ["image"], "properties": _IMAGE_COMMON}
# multipart/form-data image uploads (bounded by general_settings.max_image_upload_bytes), answered as generation is
IMAGE_UPLOADS: list[tuple[str, str, dict[str, Any]]] = [
    ("/v1/images/edits", "Images edited from uploaded ones and a prompt; billed as generation is", _IMAGE_EDIT),
    ("/v1/images/variations", "Variations of an uploaded image (DALL·E 2); billed as generation is", _IMAGE_VARIATION),
]


def _audio_paths(paths: dict[str, dict[str, Any]], speech_ref: dict[str, Any]) -> None:
    errors = {
        code: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for code, text in (
            ("400", "Invalid request, naming the field; or a budget it cannot pay"),
            ("401", "Missing or wrong key"),
            ("404", "Unknown model"),
        )
    }
    upload = {"type": "object", "required": ["file", "model"], "properties": _UPLOAD_FIELDS}
    for path, summary in AUDIO_UPLOADS:
        paths[path] = {
            "post": {
                "summary": summary,
                "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": upload}}},
                "responses": {
                    "200": {
                        "description": "OpenAI's transcription: JSON, or plain text for text, srt and vtt",
                        "content": {"application/json": {"schema": {}}, "text/plain": {"schema": {"type": "string"}}},
                    },
                    "413": {
                        "description": "The upload is past general_settings.max_audio_bytes",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                    **errors,
                },
            }
        }
    for path, summary, schema in IMAGE_UPLOADS:
        paths[path] = {
            "post": {
                "summary": summary,
                "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}},
                "responses": {
                    "200": {"description": "OpenAI's image answer", "content": {"application/json": {"schema": {}}}},
                    "413": {
                        "description": "The upload is past general_settings.max_image_upload_bytes",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                    **errors,
                },
            }
        }
    paths[SPEECH_PATH] = {
        "post": {
            "summary": "Spoken audio of a text, streamed as it is made; billed per input character",
            "security": [{"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": speech_ref}}},
            "responses": {
                "200": {
                    "description": "The audio in the format asked for",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                },
                **errors,
            },
        }
    }


_EVENTS = {
    "description": 'A usage event or LiteLLM\'s StandardLoggingPayload; one, a list, or {"events": [...]} '
    "(at most 1000 events)",
    "oneOf": [
        {"type": "object"},
        {"type": "array", "items": {"type": "object"}},
        {"type": "object", "properties": {"events": {"type": "array", "items": {"type": "object"}}}},
    ],
}

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {k: {"type": ["string", "null"]} for k in ("message", "type", "param", "code")},
        }
    },
}


def document() -> bytes:
    types = [op[3] for op in OPERATIONS if op[3] is not None] + [m[2] for m in MODEL_ENDPOINTS] + [Speech]
    (refs, schemas) = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    ref_of = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, body, query in OPERATIONS:
        op: dict[str, Any] = {
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                **{
                    code: {
                        "description": text,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    }
                    for code, text in (
                        ("400", "Invalid request, naming the field"),
                        ("401", "Missing or wrong key"),
                        ("403", "Not allowed for this key's role"),
                        ("404", "Unknown id"),
                    )
                },
            },
        }
        if body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref_of[body]}}}
        params = [
            {"name": name.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
            for name in path.split("/")
            if name.startswith("{")
        ]
        params += [{"name": q, "in": "query", "schema": {"type": "string"}} for q in query]
        if params:
            op["parameters"] = params
        paths.setdefault(path, {})[method.lower()] = op
    for method, path, summary, query in RESPONSES:
        params = [{"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}]
        operation: dict[str, Any] = {
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OpenAI's shape"},
                "404": {
                    "description": "Unknown, expired, or another key's response",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
        found = params if "{" in path else []
        found += [{"name": q, "in": "query", "schema": {"type": "string"}} for q in query]
        if found:
            operation["parameters"] = found
        if method == "POST" and "{" not in path:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        paths.setdefault(path, {})[method.lower()] = operation
    for path, summary, struct in MODEL_ENDPOINTS:
        paths[path] = {
            "post": {
                "summary": summary,
                "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref_of[struct]}}},
                "responses": {
                    "200": {"description": "The provider's shape", "content": {"application/json": {"schema": {}}}},
                    **{
                        code: {
                            "description": text,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        }
                        for code, text in (
                            ("400", "Invalid request, naming the field; or a budget it cannot pay"),
                            ("401", "Missing or wrong key"),
                            ("404", "Unknown model"),
                        )
                    },
                },
            }
        }
    _audio_paths(paths, ref_of[Speech])
    paths[LAGO_WEBHOOK[0]] = {
        "post": {
            "summary": LAGO_WEBHOOK[1],
            "parameters": [
                {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
                for name in ("X-Lago-Signature", "X-Lago-Signature-Algorithm", "X-Lago-Unique-Key")
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {
                "200": {"description": "Taken (the customer re-read), a duplicate, or a type that is ignored"},
                **{
                    code: {
                        "description": text,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    }
                    for code, text in (
                        ("400", "Signature headers missing, or a body that is not a JSON object"),
                        ("401", "An unknown algorithm or a signature that is not Lago's; nothing changed"),
                        ("404", "Prepaid credits are off"),
                        ("413", "Body too large"),
                        ("503", "Lago did not answer the re-read; send it again"),
                    )
                },
            },
        }
    }
    for path, summary in INGEST:
        paths[path] = {
            "post": {
                "summary": summary,
                "security": [{"webhookSecret": []}, {"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReportedUsage"}}},
                },
                "responses": {
                    "200": {"description": "Stored (accepted) or stored before (duplicate), per event"},
                    **{
                        code: {
                            "description": text,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        }
                        for code, text in (
                            ("400", "Not JSON, or not an event, a list or {events}"),
                            ("401", "Missing or wrong webhook secret"),
                            ("413", "Body too large"),
                            ("422", "An event's field is unusable, named with its index; nothing was stored"),
                            ("503", "Not stored; send it again"),
                        )
                    },
                },
            }
        }
    return orjson.dumps(
        {
            "openapi": "3.1.0",
            "info": {"title": "meterway management API", "version": __version__},
            "paths": paths,
            "components": {
                "schemas": {**schemas, "Error": _ERROR, "ReportedUsage": _EVENTS},
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "webhookSecret": {"type": "apiKey", "in": "header", "name": "X-Webhook-Secret"},
                },
            },
        }
    )
