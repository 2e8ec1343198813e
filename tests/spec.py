"""Validate JSON documents against the Cloudflare Realtime OpenAPI spec in ../shared/reference/.

Shared by the API model tests and the SFU emulator's conformance tests, so both check against the
same copy of the spec. OpenAPI 3.0 schemas are not quite JSON Schema: ``nullable`` becomes a "null"
type and ``#/components/schemas/...`` references resolve through a ``referencing`` registry.

``strict=True`` (the default) also rejects properties the spec does not declare, which it never says
itself (no ``additionalProperties: false``), so that a misspelt field name fails validation. It adds
``unevaluatedProperties: false`` to every object schema that is not a branch of ``allOf``/``oneOf``/
``anyOf``, so properties declared by any branch still count.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_FILE = "cloudflare-realtime-api-2024-05-21.yaml"
SHARED_ENV = "SPLITRELAY_SHARED"
SPEC_URI = "urn:splitrelay:cloudflare-realtime-api"
_BRANCH_KEYWORDS = ("allOf", "oneOf", "anyOf")


def reference_dir() -> Path:
    """``$SPLITRELAY_SHARED/reference`` (or ``$SPLITRELAY_SHARED`` itself), else ``../shared/reference``."""
    override = os.environ.get(SHARED_ENV)
    if override:
        base = Path(override)
        return base / "reference" if (base / "reference" / SPEC_FILE).is_file() else base
    return Path(__file__).resolve().parents[2] / "shared" / "reference"


def spec_path() -> Path:
    path = reference_dir() / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: set {SHARED_ENV} to the shared/ directory")
    return path


@functools.cache
def load_spec() -> dict[str, Any]:
    with spec_path().open(encoding="utf-8") as handle:
        doc = yaml.safe_load(handle)
    if not isinstance(doc, dict) or not str(doc.get("openapi", "")).startswith("3.0"):
        raise ValueError(f"{spec_path()} is not an OpenAPI 3.0 document")
    return doc


def _is_object_schema(node: dict[str, Any]) -> bool:
    if node.get("type") == "object" or "properties" in node or "$ref" in node:
        return True
    return any(key in node for key in _BRANCH_KEYWORDS)


def to_json_schema(node: Any, *, strict: bool, closed: bool = True) -> Any:
    """One OpenAPI 3.0 schema object as JSON Schema 2020-12 (see the module docstring)."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "nullable":
            continue
        if key == "$ref":
            if not isinstance(value, str) or not value.startswith("#/"):
                raise ValueError(f"unsupported $ref {value!r}: only local references are resolved")
            out[key] = SPEC_URI + value
        elif key in _BRANCH_KEYWORDS:
            out[key] = [to_json_schema(branch, strict=strict, closed=False) for branch in value]
        elif key == "properties":
            out[key] = {name: to_json_schema(sub, strict=strict) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(value, strict=strict)
        else:
            out[key] = value
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    if strict and closed and _is_object_schema(out):
        out["unevaluatedProperties"] = False
    return out


@functools.cache
def _registry(strict: bool) -> Registry[Any]:
    schemas = load_spec()["components"]["schemas"]
    converted = {
        "components": {
            "schemas": {
                name: to_json_schema(schema, strict=strict, closed=False) for name, schema in schemas.items()
            }
        }
    }
    resource = Resource.from_contents(converted, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    return registry


def validator(schema: Any, *, strict: bool = True) -> Draft202012Validator:
    """A validator for an OpenAPI schema object taken from the spec (a ``$ref`` or an inline schema)."""
    return Draft202012Validator(to_json_schema(schema, strict=strict), registry=_registry(strict))


def errors(doc: Any, schema: Any, *, strict: bool = True) -> list[str]:
    """Every violation as ``path: message``; empty when ``doc`` is valid."""
    found = validator(schema, strict=strict).iter_errors(doc)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}" for error in found
    ]


def validate(doc: Any, schema_name: str, *, strict: bool = True) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``doc`` fits ``#/components/schemas/<schema_name>``."""
    if schema_name not in load_spec()["components"]["schemas"]:
        raise KeyError(f"no component schema named {schema_name!r}")
    validator({"$ref": f"#/components/schemas/{schema_name}"}, strict=strict).validate(doc)


def operation(method: str, path: str) -> dict[str, Any]:
    """The spec's operation object for ``method`` on the templated ``path`` (``/apps/{appId}/...``)."""
    try:
        op = load_spec()["paths"][path][method.lower()]
    except KeyError:
        raise KeyError(f"the spec has no {method.upper()} {path}") from None
    if not isinstance(op, dict):
        raise TypeError(f"{method.upper()} {path} is not an operation object")
    return op


def _json_content(holder: dict[str, Any]) -> dict[str, Any]:
    content = holder.get("content", {}).get("application/json")
    if not isinstance(content, dict):
        raise KeyError("no application/json content")
    return content


def request_schema(method: str, path: str) -> Any:
    op = operation(method, path)
    if "requestBody" not in op:
        raise KeyError(f"{method.upper()} {path} documents no request body")
    return _json_content(op["requestBody"])["schema"]


def response_schema(method: str, path: str, status: int) -> Any:
    responses = operation(method, path)["responses"]
    if str(status) not in responses:
        raise KeyError(f"{method.upper()} {path} documents no {status} response")
    return _json_content(responses[str(status)])["schema"]


def validate_request(method: str, path: str, doc: Any, *, strict: bool = True) -> None:
    validator(request_schema(method, path), strict=strict).validate(doc)


def validate_response(method: str, path: str, status: int, doc: Any, *, strict: bool = True) -> None:
    validator(response_schema(method, path, status), strict=strict).validate(doc)


@dataclass(frozen=True)
class Example:
    """One example document from the spec: a request body, or a response body with its status."""

    method: str
    path: str
    status: int | None  # None for a request body
    name: str
    value: Any


def _media_examples(content: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    if "example" in content:
        yield "example", content["example"]
    for name, example in content.get("examples", {}).items():
        if isinstance(example, dict) and "value" in example:
            yield name, example["value"]
    schema = content.get("schema", {})
    if isinstance(schema, dict):  # the spec also hides examples inside `allOf: [$ref, {example: ...}]`
        for index, branch in enumerate(schema.get("allOf", [])):
            if isinstance(branch, dict) and "example" in branch:
                yield f"schema.allOf[{index}].example", branch["example"]


def examples(method: str, path: str) -> Iterator[Example]:
    """Every example the spec gives for one operation, request bodies first."""
    op = operation(method, path)
    if "requestBody" in op:
        for name, value in _media_examples(_json_content(op["requestBody"])):
            yield Example(method.upper(), path, None, name, value)
    for status, response in op.get("responses", {}).items():
        if "content" in response:
            for name, value in _media_examples(_json_content(response)):
                yield Example(method.upper(), path, int(status), name, value)
