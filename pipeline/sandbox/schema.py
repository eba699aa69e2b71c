"""Validates a WhatsApp send body against the `Message` schema of Meta's OpenAPI spec (Draft 2020-12).

The schema closure is extracted once from the 1 MB YAML into a small committed JSON file
(`python -m pipeline.sandbox.schema --extract`); run time loads only the JSON.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from pipeline.sandbox.shapes import ShapeMasker

DATA_DIR = Path(__file__).parent / "data"
SPEC_YAML = DATA_DIR / "meta-whatsapp-business-messaging-openapi-v23.0.yaml"
SCHEMA_JSON = DATA_DIR / "whatsapp_message_schema.json"
ROOT = "Message"

Schema = dict[str, Any]

# Annotation-only keywords: dropped on extraction to keep the JSON small; they never affect validity.
_ANNOTATIONS = frozenset({"description", "example", "examples", "title", "externalDocs"})
# Keywords whose value maps names to subschemas, or holds subschemas, or lists of them.
_NAMED_SUBSCHEMAS = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
_SUBSCHEMA = frozenset({
    "items", "not", "if", "then", "else", "additionalProperties", "unevaluatedProperties",
    "contains", "propertyNames", "unevaluatedItems",
})
_SUBSCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SPEC_PREFIX = "#/components/schemas/"
_DEFS_PREFIX = "#/$defs/"


# ---------------------------------------------------------------- extraction (YAML -> JSON)

def _compact(schema: Any) -> Any:
    """Copy of a schema without annotations, with refs pointing into `$defs` (schema-aware walk,
    so a *property* named `description` survives)."""
    if not isinstance(schema, dict):
        return schema
    out: Schema = {}
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key in _NAMED_SUBSCHEMAS:
            out[key] = {name: _compact(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA:
            out[key] = _compact(value)
        elif key in _SUBSCHEMA_LISTS:
            out[key] = [_compact(sub) for sub in value]
        elif key == "$ref":
            out[key] = value.replace(_SPEC_PREFIX, _DEFS_PREFIX)
        elif key == "discriminator":
            mapping = {k: v.replace(_SPEC_PREFIX, _DEFS_PREFIX) for k, v in value.get("mapping", {}).items()}
            out[key] = {**value, "mapping": mapping}
        else:
            out[key] = value
    return out


def _references(schema: Any) -> Iterator[str]:
    """Names of the spec schemas this one points at, by `$ref` or by discriminator mapping."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            elif key == "discriminator" and isinstance(value, dict):
                yield from value.get("mapping", {}).values()
            else:
                yield from _references(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _references(item)


def extract(spec: dict[str, Any], root: str = ROOT) -> Schema:
    """The closure of `components/schemas/<root>` as one self-contained Draft 2020-12 schema.

    Discriminator mappings are followed too: OpenAPI uses them to say which sub-schema judges a
    component or parameter, and `_translate_discriminators` turns them into if/then at load time.
    """
    schemas = spec["components"]["schemas"]
    defs: Schema = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in defs:
            continue
        defs[name] = _compact(schemas[name])
        for ref in _references(schemas[name]):
            if not ref.startswith(_SPEC_PREFIX):
                raise ValueError(f"{name}: reference outside components/schemas: {ref}")
            todo.append(ref.removeprefix(_SPEC_PREFIX))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            f"components/schemas/{root} and its closure, extracted from {SPEC_YAML.name} by "
            "`python -m pipeline.sandbox.schema --extract`; annotations stripped. Deviations from the "
            "published spec are applied at load time in pipeline/sandbox/schema.py."
        ),
        "$ref": _DEFS_PREFIX + root,
        "$defs": dict(sorted(defs.items())),
    }


def write_extract(yaml_path: Path = SPEC_YAML, json_path: Path = SCHEMA_JSON) -> Schema:
    import yaml  # only the extraction needs the YAML parser

    raw = yaml_path.read_bytes()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    schema = extract(yaml.load(raw, Loader=loader))
    schema["$comment"] += f" Source sha256: {hashlib.sha256(raw).hexdigest()}."
    Draft202012Validator.check_schema(schema)
    json_path.write_text(json.dumps(schema, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return schema


# ---------------------------------------------------------------- deviations from the published spec
# Each function patches `$defs` in place. Its docstring is the reason: where the spec contradicts
# Meta's own examples and documentation, the sandbox accepts what the real API accepts.

def _recipient_type_optional(defs: Schema) -> None:
    """The spec requires `recipient_type`; Meta's send examples omit it and the docs call it
    optional (default "individual"). Its enum is still checked when present."""
    base = defs["BaseMessageProperties"]
    base["required"] = [r for r in base["required"] if r != "recipient_type"]


def _language_policy_optional(defs: Schema) -> None:
    """The spec requires `template.language.policy`; Meta's examples send only `code` and the docs
    say "deterministic" is the only value and optional. Its enum is still checked when present."""
    language = defs["LanguageObject"]
    language["required"] = [r for r in language["required"] if r != "policy"]


def _callback_data_on_every_message(defs: Schema) -> None:
    """`biz_opaque_callback_data` (max 512 chars, echoed on status webhooks) is documented for every
    send but missing from the spec; without it `_closed_message_kinds` would refuse it on text."""
    defs["BaseMessageProperties"]["properties"]["biz_opaque_callback_data"] = {
        "type": "string", "maxLength": 512,
    }


def _closed_message_kinds(defs: Schema) -> None:
    """Message kinds are `allOf[BaseMessageProperties, {additionalProperties: false, ...}]`. In JSON
    Schema `additionalProperties` cannot see properties declared in a sibling, so a correct text
    message is refused (`messaging_product`, `to` "unexpected"). The intent, a closed object over
    both parts, is Draft 2020-12's `unevaluatedProperties: false` on the wrapper."""
    base_ref = _DEFS_PREFIX + "BaseMessageProperties"
    for schema in defs.values():
        parts = schema.get("allOf", [])
        if not any(part.get("$ref") == base_ref for part in parts):
            continue
        closed = [part for part in parts if part.get("additionalProperties") is False]
        for part in closed:
            del part["additionalProperties"]
        if closed:
            schema["unevaluatedProperties"] = False


def _button_index_pattern(defs: Schema) -> None:
    """The spec's button `index` pattern `^[2-6, 11-14]$` is a malformed character class: it refuses
    "0", which the spec's own template example uses. Meta documents indexes 0-9."""
    for name in ("TemplateComponent", "ButtonComponent"):
        for schema in [defs[name], *defs[name].get("allOf", [])]:
            index = schema.get("properties", {}).get("index")
            if index and "pattern" in index:
                index["pattern"] = "^[0-9]$"


def _parameter(kind: str, base: str, value: Schema) -> Schema:
    return {"allOf": [{"$ref": _DEFS_PREFIX + base},
                      {"type": "object", "required": [kind], "properties": {"type": {"enum": [kind]}, kind: value}}]}


def _copy_code_and_flow_buttons(defs: Schema) -> None:
    """The spec's button sub_types stop at quick_reply / url / catalog and its button parameters at payload / text,
    yet its own example "Send Flow Template Message" sends sub_type `flow` with `{"type": "action", "action":
    {"flow_token", "flow_action_data"}}`, and Meta's copy-code template reference sends sub_type `copy_code` with
    `{"type": "coupon_code", "coupon_code": ...}` (at most 15 characters)."""
    for name in ("TemplateComponent", "ButtonComponent"):
        for schema in [defs[name], *defs[name].get("allOf", [])]:
            sub_type = schema.get("properties", {}).get("sub_type")
            if sub_type and "enum" in sub_type:
                sub_type["enum"] = [*sub_type["enum"], "copy_code", "flow"]
    base = defs["ButtonParameterObject"]
    base["properties"]["type"]["enum"] = [*base["properties"]["type"]["enum"], "action", "coupon_code"]
    base["discriminator"]["mapping"].update({"action": _DEFS_PREFIX + "ButtonActionParameter",
                                             "coupon_code": _DEFS_PREFIX + "ButtonCouponParameter"})
    defs["ButtonActionParameter"] = _parameter("action", "ButtonParameterObject", {
        "type": "object", "required": ["flow_token"], "additionalProperties": False,
        "properties": {"flow_token": {"type": "string", "minLength": 1}, "flow_action_data": {"type": "object"}}})
    defs["ButtonCouponParameter"] = _parameter("coupon_code", "ButtonParameterObject",
                                               {"type": "string", "minLength": 1, "maxLength": 15})


def _location_header(defs: Schema) -> None:
    """Template parameters stop at currency / date_time / document / image / text / video, but Meta's template
    reference sends a location header as `{"type": "location", "location": {"latitude", "longitude", "name",
    "address"}}`."""
    base = defs["ParameterObject"]
    base["properties"]["type"]["enum"] = [*base["properties"]["type"]["enum"], "location"]
    base["discriminator"]["mapping"]["location"] = _DEFS_PREFIX + "LocationParameter"
    coordinate: Schema = {"type": ["string", "number"]}
    defs["LocationParameter"] = _parameter("location", "ParameterObject", {
        "type": "object", "required": ["latitude", "longitude"], "additionalProperties": False,
        "properties": {"latitude": coordinate, "longitude": coordinate, "name": {"type": "string"},
                       "address": {"type": "string"}}})


def _carousel(defs: Schema) -> None:
    """Template components stop at header / body / button, but Meta's media-card carousel template reference sends
    `{"type": "carousel", "cards": [{"card_index": 0, "components": [header, body, buttons]}, ...]}` (2 to 10
    cards, each card's components judged as a template's own)."""
    for schema in [defs["TemplateComponent"], *defs["TemplateComponent"].get("allOf", [])]:
        kind = schema.get("properties", {}).get("type")
        if kind and "enum" in kind:
            kind["enum"] = [*kind["enum"], "carousel"]
    defs["TemplateComponent"]["discriminator"]["mapping"]["carousel"] = _DEFS_PREFIX + "CarouselComponent"
    card: Schema = {"type": "object", "required": ["card_index", "components"], "additionalProperties": False,
                    "properties": {"card_index": {"type": "integer", "minimum": 0, "maximum": 9},
                                   "components": {"type": "array", "minItems": 1,
                                                  "items": {"$ref": _DEFS_PREFIX + "TemplateComponent"}}}}
    defs["CarouselComponent"] = {"allOf": [{"$ref": _DEFS_PREFIX + "TemplateComponent"}, {
        "type": "object", "required": ["cards"],
        "properties": {"type": {"enum": ["carousel"]}, "cards": {"type": "array", "minItems": 2, "maxItems": 10,
                                                                  "items": card}}}]}


DEVIATIONS: tuple[Callable[[Schema], None], ...] = (
    _carousel,
    _copy_code_and_flow_buttons,
    _location_header,
    _recipient_type_optional,
    _language_policy_optional,
    _callback_data_on_every_message,
    _closed_message_kinds,
    _button_index_pattern,
)


# ---------------------------------------------------------------- discriminators -> if/then

def _rewrite_refs(schema: Any, old: str, new: str) -> None:
    if isinstance(schema, dict):
        if schema.get("$ref") == old:
            schema["$ref"] = new
        for value in schema.values():
            _rewrite_refs(value, old, new)
    elif isinstance(schema, list):
        for item in schema:
            _rewrite_refs(item, old, new)


def _translate_discriminators(defs: Schema) -> None:
    """OpenAPI's `discriminator` is not JSON Schema, so a validator ignores it and e.g. a button
    component's required `sub_type`/`index` would go unchecked. Translate each one to
    `if <prop> == key then $ref <mapped>`. The mapped schemas `allOf`-reference their base, so they
    are pointed at a copy of the base without the dispatch (`<name>__base`) to avoid a cycle. A
    `oneOf` listing exactly the mapped schemas (as on `Message`) is replaced by the dispatch, which
    selects the same single schema and reports errors at their real path."""
    for name in [n for n, s in defs.items() if "discriminator" in s]:
        schema = defs[name]
        disc = schema.pop("discriminator")
        prop, mapping = disc["propertyName"], disc["mapping"]
        targets = set(mapping.values())
        if {part.get("$ref") for part in schema.get("oneOf", [])} == targets:
            del schema["oneOf"]
        base_name = f"{name}__base"
        defs[base_name] = schema
        for target in targets:
            _rewrite_refs(defs[target.removeprefix(_DEFS_PREFIX)], _DEFS_PREFIX + name, _DEFS_PREFIX + base_name)
        dispatch: Schema = {"$ref": _DEFS_PREFIX + base_name, "required": [prop]}
        if "enum" not in schema.get("properties", {}).get(prop, {}):
            dispatch["properties"] = {prop: {"enum": sorted(mapping)}}
        defs[name] = {
            **dispatch,
            "allOf": [
                {"if": {"properties": {prop: {"const": key}}, "required": [prop]}, "then": {"$ref": target}}
                for key, target in sorted(mapping.items())
            ],
        }


# ---------------------------------------------------------------- run time

def build_schema(extracted: Schema) -> Schema:
    """The schema the sandbox validates with: the extract plus deviations and discriminators."""
    schema = copy.deepcopy(extracted)
    for deviation in DEVIATIONS:
        deviation(schema["$defs"])
    _translate_discriminators(schema["$defs"])
    return schema


@functools.cache
def _compiled() -> tuple[Draft202012Validator, ShapeMasker | None]:
    """Compiled once per process; the hot path never touches the disk."""
    schema = build_schema(json.loads(SCHEMA_JSON.read_text(encoding="utf-8")))
    return Draft202012Validator(schema), ShapeMasker.for_schema(schema)


def message_validator() -> Draft202012Validator:
    return _compiled()[0]


# Shapes of bodies known valid (see ShapeMasker); bounded so a hostile stream cannot grow it forever.
_valid_shapes: set[str] = set()
_MAX_SHAPES = 50_000


def validate_message(body: Any) -> list[str]:
    """Problems with a send body as "<JSON path>: <problem>"; an empty list means valid.

    A full jsonschema pass costs ~1.5 ms, too slow for a 1,000+ msg/s hot path, but a campaign
    sends one shape many times: once a shape validated, same-shape bodies are valid too.
    """
    validator, masker = _compiled()
    key = masker.key(body) if masker else None
    if key is not None and key in _valid_shapes:
        return []
    problems = sorted({_describe(error) for error in validator.iter_errors(body)})
    if not problems and key is not None:
        if len(_valid_shapes) >= _MAX_SHAPES:
            _valid_shapes.clear()
        _valid_shapes.add(key)
    return problems


def _describe(error: ValidationError) -> str:
    # oneOf/anyOf failures (media `id` or `link`) say only "not valid under any of the given
    # schemas"; the branches' own errors say what is missing.
    if error.context:
        branches = sorted({_message(inner) for inner in error.context})
        return f"{error.json_path}: {' or '.join(branches)}"
    return f"{error.json_path}: {_message(error)}"


def _message(error: ValidationError) -> str:
    # jsonschema quotes the whole value; a 10 kB text must not flood the error body.
    if error.validator == "maxLength" and isinstance(error.instance, str):
        return f"is longer than {error.validator_value} characters ({len(error.instance)})"
    message = error.message
    return message if len(message) <= 200 else message[:197] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sandbox.schema", description=__doc__)
    parser.add_argument("--extract", action="store_true", help=f"regenerate {SCHEMA_JSON.name} from the YAML")
    args = parser.parse_args(argv)
    if not args.extract:
        parser.print_help()
        return 2
    schema = write_extract()
    print(f"wrote {SCHEMA_JSON} ({len(schema['$defs'])} schemas, {SCHEMA_JSON.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
