"""Turn a pydantic JSON Schema (draft 2020-12) into a Kubernetes structural OpenAPI v3 schema.

A CRD's schema must be *structural*: every node has a `type` (or is int-or-string), no `$ref`,
no `anyOf` that changes the type, no `additionalProperties` beside `properties`, no `null`, and
`exclusiveMinimum`/`exclusiveMaximum` are booleans (OpenAPI 3.0) rather than numbers. Pydantic
emits the 2020-12 spelling, so this module rewrites it. The rewrite is deterministic: the same
models always give the same YAML, which is what the drift test compares.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

# Keys of a JSON schema node that Kubernetes understands and that we keep as they are.
_KEEP = {
    "type", "format", "description", "enum", "default", "pattern", "minLength", "maxLength",
    "minimum", "maximum", "minItems", "maxItems", "minProperties", "maxProperties", "required",
    "uniqueItems", "multipleOf", "nullable",
}


class SchemaError(ValueError):
    """The pydantic schema uses a construct that has no structural equivalent."""


def structural(json_schema: dict[str, Any]) -> dict[str, Any]:
    """The structural equivalent of a pydantic `model_json_schema(by_alias=True)`."""
    defs = json_schema.get("$defs", {})
    root = {k: v for k, v in json_schema.items() if k != "$defs"}
    return _convert(root, defs, path="")


def unwrap(text: str) -> str:
    """Join the lines of each paragraph of a docstring: `kubectl explain` wraps text itself."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _resolve(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Inline a `$ref` (and a single-element `allOf`), letting the referring node's own keys
    (its description, default) override the referenced model's."""
    node = dict(node)
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        node = {**inner, **node}
    if "$ref" in node:
        ref = node.pop("$ref")
        prefix = "#/$defs/"
        if not ref.startswith(prefix) or ref[len(prefix):] not in defs:
            raise SchemaError(f"{path or '<root>'}: unresolvable $ref {ref}")
        target = copy.deepcopy(defs[ref[len(prefix):]])
        node = {**target, **node}
        return _resolve(node, defs, path)
    return node


def _without_null(node: dict[str, Any], path: str) -> dict[str, Any]:
    """`X | None` is `anyOf: [X, {type: null}]`: optional means absent, so keep X."""
    options = node.get("anyOf")
    if options is None:
        return node
    non_null = [o for o in options if o.get("type") != "null"]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if rest.get("default", 0) is None:
        del rest["default"]
    if len(non_null) == 1:
        return {**non_null[0], **rest}
    types = sorted(o.get("type", "") for o in non_null)
    if types == ["integer", "string"]:
        merged: dict[str, Any] = {**rest, "x-kubernetes-int-or-string": True}
        for option in non_null:
            for key in ("pattern", "maxLength", "minimum", "maximum"):
                if key in option:
                    merged[key] = option[key]
        return merged
    raise SchemaError(f"{path}: union of {types} has no structural schema")


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs, path)
    node = _without_null(node, path)
    node = _resolve(node, defs, path)
    out: dict[str, Any] = {}
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    for key, value in node.items():
        if key in _KEEP or key.startswith("x-kubernetes-"):
            out[key] = copy.deepcopy(value)
    if "description" in out:
        out["description"] = unwrap(out["description"])
    # OpenAPI 3.0 spells exclusive bounds as booleans beside minimum/maximum.
    if "exclusiveMinimum" in node:
        out["minimum"] = node["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node:
        out["maximum"] = node["exclusiveMaximum"]
        out["exclusiveMaximum"] = True
    if "enum" in out and "type" not in out:
        kinds = {type(v) for v in out["enum"]}
        if kinds == {str}:
            out["type"] = "string"
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {
            name: _convert(child, defs, f"{path}.{name}")
            for name, child in node["properties"].items()
        }
        if not out.get("required"):
            out.pop("required", None)
    elif node.get("type") == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = _convert(extra, defs, f"{path}[*]")
        elif extra is not False:
            # A free-form object (e.g. metadata): Kubernetes decides what it holds.
            out.setdefault("x-kubernetes-preserve-unknown-fields", True)
    if node.get("type") == "array":
        if "items" not in node:
            raise SchemaError(f"{path}: array without items")
        out["items"] = _convert(node["items"], defs, f"{path}[]")
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path or '<root>'}: node without a type: {sorted(node)}")
    return _ordered(out)


# Stable key order makes the YAML readable: what it is, then its constraints, then children.
_ORDER = [
    "description", "type", "format", "enum", "default", "x-kubernetes-int-or-string",
    "pattern", "minLength", "maxLength", "minimum", "exclusiveMinimum", "maximum",
    "exclusiveMaximum", "minItems", "maxItems", "minProperties", "maxProperties",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields", "required", "properties", "additionalProperties",
    "items", "x-kubernetes-validations",
]


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    rank = {key: i for i, key in enumerate(_ORDER)}
    return {k: node[k] for k in sorted(node, key=lambda k: (rank.get(k, len(_ORDER)), k))}
