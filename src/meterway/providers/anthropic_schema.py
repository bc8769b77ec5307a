"""An OpenAI ``response_format`` JSON schema as Anthropic's structured output takes it.

Anthropic constrains a reply to a schema (``output_config.format``, generally available since the
structured-outputs beta ended) only on recent models, and only for part of JSON Schema. What it cannot
enforce is handled the way Anthropic documents for its own SDKs: every object is closed
(``additionalProperties: false``), ``oneOf`` becomes ``anyOf``, and a constraint it does not take
(``minimum``, ``maxLength``, ``pattern``, an unknown string ``format``, ``minItems`` above 1...) is moved
into the description, where the model reads it but decoding does not enforce it. A schema that cannot be
expressed at all (recursive, an external ``$ref``, a subschema that allows anything) is answered with
``None``, and the caller keeps the forced answer tool, which takes any schema.

Pure functions on plain dicts, no state: see ``anthropic_format`` for where they are used.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

__all__ = ["native_output_schema", "supports_structured_output"]

STRUCTURED_OUTPUT_SINCE = (4, 5)
"""Claude generations from 4.5 on (Sonnet, Opus and Haiku 4.5, the 4.6 and later ones) take
``output_config.format``; earlier ones (Opus 4.1, Sonnet 4, the 3.x models) refuse it."""

_MODEL = re.compile(r"^(?:[a-z]+\.)?claude-(?:opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?$")  # `anthropic.` on Bedrock
_SUFFIX = re.compile(r"(?:-\d{8}|-latest|-v\d+(?::\d+)?|@\d{8})+$")  # snapshot date, -latest, -v1:0, Vertex @date

_STRING_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)
_DESCRIBED = ("description", "title")


def supports_structured_output(model: str) -> bool:
    """Whether an Anthropic model name is one that takes ``output_config.format``. Unknown names
    (another vendor's prefix, a fine-tune alias) are assumed not to: the forced tool works on all."""
    name = _SUFFIX.sub("", model.rsplit("/", 1)[-1].lower())
    match = _MODEL.match(name)
    if match is None:
        return False
    version = (int(match.group(1)), int(match.group(2) or 0))
    return version >= STRUCTURED_OUTPUT_SINCE


class _Unsupported(Exception):
    """The schema has something structured output cannot express; the forced tool is used instead."""


def native_output_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The schema to send as ``output_config.format.schema``, or None when it cannot be sent."""
    definitions = {**_dict(schema.get("definitions")), **_dict(schema.get("$defs"))}
    try:
        _refuse_recursion(definitions)
        out = _convert(schema, definitions)
        if "$defs" in schema or "definitions" in schema:
            out["$defs"] = {name: _convert(sub, definitions) for name, sub in definitions.items()}
    except _Unsupported:
        return None
    return out if out.get("type") == "object" else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ref_name(ref: Any) -> str:
    if not isinstance(ref, str):
        raise _Unsupported
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    raise _Unsupported  # an external or non-definition $ref


def _refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {_ref_name(value["$ref"])} if "$ref" in value else set()
        return found.union(*(_refs(item) for key, item in value.items() if key not in ("$defs", "definitions")))
    if isinstance(value, list):
        return set().union(*(_refs(item) for item in value))
    return set()


def _refuse_recursion(definitions: dict[str, Any]) -> None:
    edges = {name: _refs(sub) for name, sub in definitions.items()}
    for name in edges:
        seen: set[str] = set()
        todo = list(edges[name])
        while todo:
            current = todo.pop()
            if current == name:
                raise _Unsupported
            if current not in seen:
                seen.add(current)
                todo.extend(edges.get(current, ()))


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _convert(schema: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise _Unsupported  # `true`/`false` schemas: anything, or nothing
    rest = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
    if "$ref" in rest:
        name = _ref_name(rest["$ref"])
        if name not in definitions:
            raise _Unsupported
        return {"$ref": f"#/$defs/{name}"}
    out: dict[str, Any] = {}
    kind = rest.pop("type", None)
    if isinstance(kind, list):  # ["string", "null"]: one branch per type
        variants = [_convert({**rest, "type": t}, definitions) for t in kind]
        return {"anyOf": variants} if len(variants) > 1 else variants[0]
    enum = rest.get("enum")
    if isinstance(enum, list) and enum and all(_primitive(v) for v in enum):
        out["enum"] = rest.pop("enum")
    if "const" in rest and _primitive(rest["const"]):
        out["const"] = rest.pop("const")
    for combinator, target in (("anyOf", "anyOf"), ("oneOf", "anyOf"), ("allOf", "allOf")):
        branches = rest.get(combinator)
        if isinstance(branches, list) and branches and target not in out:
            del rest[combinator]
            out[target] = [_convert(branch, definitions) for branch in branches]
    if kind is not None and "enum" not in out and "const" not in out:
        out["type"] = kind
        _typed(kind, rest, out, definitions)
    elif not out:
        raise _Unsupported  # no type, no choices: a subschema that allows any value
    for key in _DESCRIBED:
        if isinstance(rest.get(key), str):
            out[key] = rest.pop(key)
    if rest:  # what decoding cannot enforce is told to the model instead
        note = orjson.dumps(rest).decode()
        out["description"] = f"{out['description']}\n\n{note}" if "description" in out else note
    return out


def _typed(kind: Any, rest: dict[str, Any], out: dict[str, Any], definitions: dict[str, Any]) -> None:
    """Moves the keywords structured output takes for this type from `rest` into `out`."""
    if kind == "object":
        properties = rest.pop("properties", {})
        out["properties"] = {name: _convert(sub, definitions) for name, sub in _dict(properties).items()}
        if isinstance(rest.get("required"), list):
            out["required"] = rest.pop("required")
        rest.pop("additionalProperties", None)  # only `false` is taken: extra keys are never produced
        out["additionalProperties"] = False
    elif kind == "array":
        if "items" in rest:
            out["items"] = _convert(rest.pop("items"), definitions)
        if rest.get("minItems") in (0, 1):
            out["minItems"] = rest.pop("minItems")
    elif kind == "string" and rest.get("format") in _STRING_FORMATS:
        out["format"] = rest.pop("format")
