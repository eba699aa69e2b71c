"""The "shape" of a JSON body with respect to a schema: a key under which validity is cached.

Two bodies with the same shape are both valid or both invalid, so the sandbox runs a full
jsonschema pass once per shape instead of once per request.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from typing import Any

Schema = dict[str, Any]

# Keywords jsonschema skips for a string instance (they constrain objects, arrays or numbers), and
# annotations: a string value cannot change their outcome.
_IGNORED_FOR_STRINGS = frozenset({
    "properties", "required", "additionalProperties", "unevaluatedProperties", "patternProperties",
    "propertyNames", "minProperties", "maxProperties", "dependentRequired", "dependentSchemas",
    "items", "prefixItems", "minItems", "maxItems", "contains", "minContains", "maxContains",
    "unevaluatedItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "$schema", "$comment", "$defs", "$id", "$anchor", "title", "description", "example", "examples",
    "default", "deprecated", "readOnly", "writeOnly",
})
_APPLICATOR_LISTS = ("allOf", "anyOf", "oneOf")
_APPLICATORS = ("not", "if", "then", "else")


class ShapeMasker:
    """Replaces string property values the schema cannot tell apart by an equivalent placeholder.

    A string's validity under a sub-schema that only checks `type`, `minLength` and `maxLength`
    depends on its length class alone (which side of each bound it falls), so such a value is
    replaced by "x" * (the shortest length in its class). A property name is maskable only if
    every sub-schema that may apply to it anywhere in the schema is of that kind; names with an
    `enum`, `const`, `pattern`, `format` or `$ref` to such a schema (e.g. `type`, `index`) are kept
    verbatim. Array elements are kept verbatim.
    """

    def __init__(self, cuts: dict[str, list[int] | None], default: list[int] | None) -> None:
        self._cuts = cuts  # name -> sorted length-class boundaries, or None: keep verbatim
        self._default = default  # names no `properties` map declares

    @classmethod
    def for_schema(cls, schema: Schema) -> ShapeMasker | None:
        """None when the schema has keywords that compare whole values (object `enum`/`const`,
        `uniqueItems`): masking could then change the outcome, so nothing is cached."""
        if any(_compares_whole_values(sub) for sub in _subschemas(schema)):
            return None
        defs = schema.get("$defs", {})
        wildcard: list[Any] = []
        by_name: dict[str, list[Any]] = {}
        for sub in _subschemas(schema):
            for name, prop in sub.get("properties", {}).items():
                by_name.setdefault(name, []).append(prop)
            wildcard.extend(sub.get("patternProperties", {}).values())
            for key in ("additionalProperties", "unevaluatedProperties"):
                if isinstance(sub.get(key), dict):
                    wildcard.append(sub[key])
        default = _union_cuts(wildcard, defs)
        cuts = {name: _union_cuts(props + wildcard, defs) for name, props in by_name.items()}
        return cls(cuts, default)

    def key(self, body: Any) -> str:
        return json.dumps(self._mask(body), separators=(",", ":"), ensure_ascii=False)

    def _mask(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: self._mask_property(name, item) for name, item in value.items()}
        if isinstance(value, list):
            return [self._mask(item) for item in value]
        return value

    def _mask_property(self, name: str, value: Any) -> Any:
        if not isinstance(value, str):
            return self._mask(value)
        cuts = self._cuts.get(name, self._default)
        if cuts is None:
            return value
        position = bisect.bisect_right(cuts, len(value))
        return "x" * (cuts[position - 1] if position else 0)


def _subschemas(schema: Any) -> Iterator[Schema]:
    """Every schema object nested anywhere in `schema` (including itself)."""
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            if isinstance(value, dict | list):
                yield from _subschemas(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _subschemas(item)


def _compares_whole_values(schema: Schema) -> bool:
    if schema.get("uniqueItems") is True:
        return True
    values = list(schema.get("enum", [])) if isinstance(schema.get("enum"), list) else []
    if "const" in schema:
        values.append(schema["const"])
    return any(isinstance(value, dict | list) for value in values)


def _union_cuts(schemas: list[Any], defs: Schema) -> list[int] | None:
    cuts: set[int] = set()
    for sub in schemas:
        found = _string_cuts(sub, defs, set())
        if found is None:
            return None
        cuts |= found
    return sorted(cuts)


def _string_cuts(schema: Any, defs: Schema, seen: set[str]) -> set[int] | None:
    """Length-class boundaries if `schema` judges a string by its length only, else None."""
    if isinstance(schema, bool):
        return set()
    if not isinstance(schema, dict):
        return None
    cuts: set[int] = set()
    for key, value in schema.items():
        if key in _IGNORED_FOR_STRINGS or key == "type":
            continue
        if key == "maxLength":
            cuts.add(value + 1)
        elif key == "minLength":
            cuts.add(value)
        elif key == "$ref" and value.startswith("#/$defs/"):
            name = value.removeprefix("#/$defs/")
            if name in seen:
                continue  # a cycle: the first visit judges it
            found = _string_cuts(defs.get(name), defs, seen | {name})
            if found is None:
                return None
            cuts |= found
        elif key in _APPLICATOR_LISTS or key in _APPLICATORS:
            for sub in value if key in _APPLICATOR_LISTS else [value]:
                found = _string_cuts(sub, defs, seen)
                if found is None:
                    return None
                cuts |= found
        else:
            return None  # enum, const, pattern, format, unknown keywords: content matters
    return cuts
