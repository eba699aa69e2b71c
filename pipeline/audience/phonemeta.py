"""libphonenumber's own metadata, read from the installed `phonenumbers` at run time and shaped
for vectorised matching: anchored regexes, possible lengths, length verdicts per region.

Nothing here is a hand-written table, so upgrading phonenumbers keeps the fast path in agreement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberType, ValidationResult
from phonenumbers import phonenumberutil as _util

try:  # the regex parser, for the lengths a pattern can match
    from re import _parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_parse as _parser  # type: ignore[no-redef]

# Length verdicts of phonenumbers' _test_number_length, looked up by length (clipped to this).
MAX_LENGTH = 32
TOO_SHORT = ValidationResult.TOO_SHORT
TOO_LONG = ValidationResult.TOO_LONG
LOCAL_ONLY = ValidationResult.IS_POSSIBLE_LOCAL_ONLY
INVALID_LENGTH = ValidationResult.INVALID_LENGTH
MAX_NSN_LENGTH = _util._MAX_LENGTH_FOR_NSN
MIN_NSN_LENGTH = _util._MIN_LENGTH_FOR_NSN
MAX_INPUT_LENGTH = _util._MAX_INPUT_STRING_LENGTH

TYPE_NAMES: dict[int, str] = {v: k.lower() for k, v in vars(PhoneNumberType).items() if k.isupper()}
# The order _number_type_helper tests the special types in, before fixed line and mobile.
_SPECIAL_TYPES = (
    "premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail",
)  # fmt: skip


def anchored(pattern: str, *, whole: bool = True) -> str:
    """A Rust-regex pattern matching like Python's fullmatch (whole) or match (prefix). `(?-u)`
    keeps \\d ASCII-only (our inputs are ASCII digits) and makes compiling much cheaper."""
    return f"(?-u)^(?:{pattern})" + ("$" if whole else "")


def _rust_template(rule: str) -> str:
    """Python's re.sub template (\\1) in Rust's replacement syntax (${1})."""
    if "$" in rule or re.search(r"\\[^0-9]", rule):
        raise ValueError(f"unsupported national prefix transform rule {rule!r}")
    return re.sub(r"\\(\d+)", r"${\1}", rule)


@dataclass(frozen=True)
class Desc:
    """One PhoneNumberDesc: a number matches when its length is possible and the regex matches."""

    pattern: str  # anchored, whole match
    lengths: tuple[int, ...]  # empty: no length check (none given, or none needed)


@dataclass(frozen=True)
class RegionMeta:
    key: str  # the region code, or "+<cc>" for a non-geographic calling code (region "001")
    region: str  # what region_code_for_number answers: "GB", or "001"
    country_code: int
    international_prefix: str | None  # anchored prefix
    national_prefix: str | None  # anchored prefix (national_prefix_for_parsing)
    national_prefix_groups: int
    transform: str | None  # Rust replacement template
    general: str | None  # anchored general_desc pattern (regex only, as _match_national_number)
    general_desc: Desc | None
    special: tuple[tuple[str, Desc], ...]  # (type name, desc) in phonenumbers' order
    fixed_line: Desc | None
    mobile: Desc | None
    same_mobile_and_fixed_line: bool
    leading_digits: str | None  # anchored prefix
    length_any: tuple[int, ...]  # _test_number_length verdict by length (UNKNOWN type)
    length_mobile: tuple[int, ...]  # ... for the MOBILE type


def _desc(desc) -> Desc | None:  # noqa: ANN001 - phonenumbers' PhoneNumberDesc
    if desc is None or not desc.national_number_pattern:
        return None
    lengths = tuple(desc.possible_length or ())
    low, high = _parser.parse(desc.national_number_pattern).getwidth()
    if lengths and set(range(low, high + 1)) <= set(lengths):
        lengths = ()  # every match has a possible length already: checking it again changes nothing
    return Desc(anchored(desc.national_number_pattern), lengths)


def _lengths(metadata: PhoneMetadata, kind: int) -> tuple[int, ...]:
    return tuple(_util._test_number_length("0" * n, metadata, kind) for n in range(MAX_LENGTH + 1))


def _build(key: str, region: str, metadata: PhoneMetadata) -> RegionMeta:
    npfp = metadata.national_prefix_for_parsing or None
    groups = re.compile(npfp).groups if npfp else 0
    rule = metadata.national_prefix_transform_rule or None
    if rule is not None and groups == 0:
        raise ValueError(f"{key}: a transform rule without capturing groups")  # would crash phonenumbers
    general = metadata.general_desc
    return RegionMeta(
        key=key,
        region=region,
        country_code=metadata.country_code,
        international_prefix=anchored(metadata.international_prefix, whole=False)
        if metadata.international_prefix
        else None,
        national_prefix=anchored(npfp, whole=False) if npfp else None,
        national_prefix_groups=groups,
        transform=_rust_template(rule) if rule else None,
        general=anchored(general.national_number_pattern) if general and general.national_number_pattern else None,
        general_desc=_desc(general),
        special=tuple((name, d) for name in _SPECIAL_TYPES if (d := _desc(getattr(metadata, name))) is not None),
        fixed_line=_desc(metadata.fixed_line),
        mobile=_desc(metadata.mobile),
        same_mobile_and_fixed_line=bool(metadata.same_mobile_and_fixed_line_pattern),
        leading_digits=anchored(metadata.leading_digits, whole=False) if metadata.leading_digits else None,
        length_any=_lengths(metadata, PhoneNumberType.UNKNOWN),
        length_mobile=_lengths(metadata, PhoneNumberType.MOBILE),
    )


@dataclass(frozen=True)
class Metadata:
    regions: dict[str, RegionMeta]  # by key: every supported region and non-geographic code
    by_code: dict[int, tuple[str, ...]]  # calling code -> keys, main region first (as phonenumbers)
    main_key: dict[int, str]  # calling code -> key of the metadata parse() uses for it
    supported_regions: frozenset[str]

    def region_code(self, code: int) -> str:
        return self.regions[self.main_key[code]].region


@cache
def metadata() -> Metadata:
    """Every region's metadata, once per process: from the cache file when this version of
    phonenumbers has been read before (≈ 10 ms), else built (≈ 0.15 s) and cached."""
    path = cache_path()
    try:
        return _from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or unreadable: build it
    built = build_metadata()
    with contextlib.suppress(OSError):  # a read-only home only costs the rebuild next time
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(_to_json(built)), encoding="utf-8")
        partial.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one
    return built


def cache_path() -> Path:
    """Where the extracted metadata is kept: $CAMPAIGN_CACHE_DIR, else the user's cache folder;
    one file per phonenumbers version (and layout of ours), so an upgrade rebuilds it."""
    root = os.environ.get("CAMPAIGN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "campaign-pipeline"
    )
    return Path(root) / f"phonemeta-{phonenumbers.__version__}-{_LAYOUT}.json"


_LAYOUT = 1  # bump when RegionMeta or Desc change


def _to_json(meta: Metadata) -> dict[str, Any]:
    return {"regions": [dataclasses.asdict(r) for r in meta.regions.values()],
            "by_code": {str(code): keys for code, keys in meta.by_code.items()},
            "main_key": {str(code): key for code, key in meta.main_key.items()},
            "supported_regions": sorted(meta.supported_regions)}  # fmt: skip


def _from_json(data: dict[str, Any]) -> Metadata:
    def desc(value: dict[str, Any] | None) -> Desc | None:
        return None if value is None else Desc(value["pattern"], tuple(value["lengths"]))

    regions = {}
    for r in data["regions"]:
        region = RegionMeta(**{
            **r, "general_desc": desc(r["general_desc"]), "fixed_line": desc(r["fixed_line"]),
            "mobile": desc(r["mobile"]), "special": tuple((name, desc(d)) for name, d in r["special"]),
            "length_any": tuple(r["length_any"]), "length_mobile": tuple(r["length_mobile"]),
        })  # fmt: skip
        regions[region.key] = region
    return Metadata(
        regions, {int(code): tuple(keys) for code, keys in data["by_code"].items()},
        {int(code): key for code, key in data["main_key"].items()}, frozenset(data["supported_regions"]),
    )


def build_metadata() -> Metadata:
    """Every region's metadata, read from phonenumbers."""
    regions: dict[str, RegionMeta] = {}
    by_code: dict[int, tuple[str, ...]] = {}
    for code, names in _util.COUNTRY_CODE_TO_REGION_CODE.items():
        keys: list[str] = []
        for name in names:
            if name == _util.REGION_CODE_FOR_NON_GEO_ENTITY:
                meta = PhoneMetadata.metadata_for_nongeo_region(code, None)
                key = f"+{code}"
            else:
                meta = PhoneMetadata.metadata_for_region(name, None)
                key = name
            if meta is None:  # phonenumbers skips these too
                continue
            regions[key] = _build(key, name, meta)
            keys.append(key)
        if keys:
            by_code[code] = tuple(keys)
    main_key = {code: keys[0] for code, keys in by_code.items()}
    return Metadata(regions, by_code, main_key, frozenset(phonenumbers.SUPPORTED_REGIONS))
