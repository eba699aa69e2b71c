"""The campaign spec: YAML validated by Pydantic; a wrong spec fails before anything is sent."""

from __future__ import annotations

import csv
import itertools
import os
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pipeline.errors import SpecError  # noqa: F401  (re-exported: raised and caught under this name)
from pipeline.records import Category, ChannelName
from pipeline.settings import CONTROLS_FILE, controls, positive_setting  # noqa: F401  (re-exported)
from pipeline.spec_kinds import (  # noqa: F401  (re-exported: the spec's parts live there)
    RENDERED_BUTTONS,
    ButtonSpec,
    CardSpec,
    ListRow,
    ListSection,
    MediaHeader,
    ReplyButton,
    SessionMessage,
)
from pipeline.spec_rates import RATE_CEILING_ERROR, rate_ceiling_refusal


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_LANGUAGE = r"^[a-z]{2,3}(_[A-Z]{2})?$"  # the providers' template language codes: en, en_US, fil


class TemplateSpec(_Spec):
    """An approved provider template and how to fill it.

    `text` is the approved body as Jinja2 over the campaign's variables (used for the preview,
    SMS/email bodies and cost estimates); `header`/`body` list the template's positional
    parameters ({{1}}, {{2}}, ...) as Jinja2 expressions over the same variables.
    """

    name: str = Field(min_length=1, max_length=512)
    language: str = Field(pattern=_LANGUAGE)
    category: Category
    text: str = Field(min_length=1)
    header: list[str] = Field(default_factory=list)
    body: list[str] = Field(default_factory=list)
    buttons: list[ButtonSpec] = Field(default_factory=list, max_length=10)
    # An image, video or document header instead of a text one (`header` then stays empty).
    header_media: MediaHeader | None = None
    # Sent instead of the template to recipients whose customer-service window is open (free-form).
    session: SessionMessage | None = None
    # A carousel template's cards (Meta: 2 to 10), in order.
    cards: list[CardSpec] = Field(default_factory=list, max_length=10)

    @model_validator(mode="after")
    def _one_header(self) -> TemplateSpec:
        if self.header_media is not None and self.header:
            raise ValueError("a template has a text header ('header') or a media one ('header_media'), not both")
        if len(self.cards) == 1:
            raise ValueError("a carousel has 2 to 10 cards")
        return self

    @property
    def card_parts(self) -> list[tuple[str, str, bool]]:
        """(where, value, rendered) for every value of the cards, in order: each card's header link, its body
        parameters, its buttons' values (a URL suffix rendered, a quick reply's payload fixed)."""
        parts: list[tuple[str, str, bool]] = []
        for i, card in enumerate(self.cards):
            if card.header_media.link is not None:
                parts.append((f"card {i} header", card.header_media.link, True))
            parts += [(f"card {i} body parameter {{{{{j}}}}}", src, True) for j, src in enumerate(card.body, 1)]
            parts += [(f"card {i} button {k} {b.sub_type}", b.text or "", True) if b.sub_type == "url"
                      else (f"card {i} button {k}", b.payload or "", False) for k, b in enumerate(card.buttons)]
        return parts

    @property
    def header_sources(self) -> list[str]:
        """The Jinja2 sources rendered per recipient for the header: its text parameters, or the media's
        link or id (rendered like any parameter, so a plain column takes the fast path)."""
        media = self.header_media
        if media is None:
            return list(self.header)
        # Only a link is rendered per recipient; an id (or a file's, once uploaded) is the same for everyone.
        return [media.link] if media.link is not None else []
    # Language per recipient (pipeline/render/languages.py): the audience's `language_column` picks one of the
    # languages the template exists in (the provider's registry when the spec names its account, else `languages`);
    # no match takes `fallback_language` (default: `language`).
    language_column: str = "language"
    languages: list[Annotated[str, Field(pattern=_LANGUAGE)]] = Field(default_factory=list, max_length=200)
    fallback_language: str | None = Field(default=None, pattern=_LANGUAGE)

    @property
    def fallback(self) -> str:
        return self.fallback_language or self.language


class RateSpec(_Spec):
    # Messages per second for each sender (pipeline/dispatch/engine.py: one lane per sender); at most the channel's
    # RATE_CEILINGS (pipeline/spec_rates.py).
    max_per_second: float = Field(default=80.0, gt=0, le=1000)
    concurrency: int = Field(default=16, ge=1, le=512)


class RetrySpec(_Spec):
    max_attempts: int = Field(default=5, ge=1, le=20)
    base_delay_s: float = Field(default=0.5, gt=0)
    max_delay_s: float = Field(default=30.0, gt=0)
    deadline_s: float = Field(default=600.0, gt=0)
    # A request that timed out may have reached the provider: wait this long for a receipt
    # carrying our id before sending it again.
    reconcile_grace_s: float = Field(default=30.0, ge=0)


_CLOCK = r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$"  # HH:MM or HH:MM:SS


class WindowSlot(_Spec):
    """One dated period in which messages may go out: a naive time is each recipient's local time, one with an
    offset the same instant everywhere."""

    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> WindowSlot:
        if (self.start.tzinfo is None) != (self.end.tzinfo is None):
            raise ValueError("start and end must both have a UTC offset, or neither")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class SendWindow(_Spec):
    """Recipients' local hours in which messages may go out (every day), or dated `slots` instead; outside them
    messages wait, and the campaign continues by itself at the next opening (flows/continuation.py)."""

    start: str = Field(default="09:00", pattern=_CLOCK)
    end: str = Field(default="21:00", pattern=_CLOCK)
    slots: list[WindowSlot] = Field(default_factory=list, max_length=1000)
    timezone_column: str = "timezone"  # used when the audience has it; else the number's zone


class SendAt(_Spec):
    """Release each recipient's message at `local_time` in the recipient's own zone (the next such time; one
    that passed less than `late_s` ago counts as now, so a campaign started at 10:05 still reaches 10:00's)."""

    local_time: str = Field(pattern=_CLOCK)
    late_s: float = Field(default=3600.0, ge=0, le=86_400)
    timezone_column: str = "timezone"

    @model_validator(mode="before")
    @classmethod
    def _bare_time(cls, value: Any) -> Any:
        return {"local_time": value} if isinstance(value, str) else value


class FrequencyCap(_Spec):
    """At most `max` messages per recipient per `per` ("7d", "24h", "90m"), counted across campaigns over `channels`
    (empty: the campaign's channel and those reaching the same app, pipeline/data/controls.yaml) for `categories`."""

    max: int = Field(ge=1, le=10_000)
    per: str = Field(pattern=r"^[1-9]\d{0,4}[mhd]$")
    channels: list[ChannelName] = Field(default_factory=list)
    categories: list[Category] = Field(default_factory=lambda: ["marketing"])

    @property
    def window(self) -> timedelta:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[self.per[-1]]
        return timedelta(**{unit: int(self.per[:-1])})


class ApprovalSpec(_Spec):
    """A person approves the campaign in the Prefect UI (or `campaign approve`) after its estimate, before it sends.
    `required: None` takes pipeline/data/controls.yaml's `required_for` (scheduled and uploaded runs)."""

    required: bool | None = None
    approvers: list[str] = Field(default_factory=list, max_length=100)  # empty: anyone but the starter
    allow_self_approval: bool | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 86_400)


class ProviderSpec(_Spec):
    """Where and how to reach the provider; unset values take the channel's defaults."""

    base_url: str | None = None
    api_version: str | None = Field(default=None, pattern=r"^v\d+\.\d+$")
    timeout_s: float = Field(default=10.0, gt=0)
    # Channel-specific settings (e.g. an SMS sender id per country, an e-mail From address).
    options: dict[str, Any] = Field(default_factory=dict)


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


class FallbackSpec(_Spec):
    """A second channel for recipients the first could not reach (e.g. WhatsApp -> SMS)."""

    channel: ChannelName
    sender: str = Field(min_length=1)
    # Also fall back when a message was sent but not delivered within this many seconds.
    after_s: float = Field(default=600.0, gt=0)
    provider: ProviderSpec = ProviderSpec()
    credentials: dict[str, str] = Field(default_factory=dict)
    rate_limit: RateSpec = RateSpec()


class PrepareSpec(_Spec):
    """How the audience is prepared: in this process, or cut into chunks of about `chunk_mb`
    prepared by `workers` Dask worker processes (same output; pipeline/render/prepare_chunks.py).
    CAMPAIGN_PREPARE_RUNNER / _WORKERS / _CHUNK_MB in the environment override these."""

    runner: Literal["single", "dask"] = "single"
    workers: int = Field(default=2, ge=1, le=256)
    chunk_mb: float = Field(default=64.0, gt=0)


class VariantSpec(_Spec):
    """One arm of an experiment: its own approved template and a weight among the arms that are sent."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    template: TemplateSpec
    weight: float = Field(default=1.0, gt=0, le=1000)


class ExperimentSpec(_Spec):
    """Variants and a holdout (issue 20; pipeline/render/arms.py assigns, pipeline/dispatch/experiment.py queues).
    No variants: the spec's own template is the one sent arm, `control`. `outcome_column`: an audience column
    holding a conversion (a value, or yes/true/1), read at queue time into the store's conversions."""

    variants: list[VariantSpec] = Field(default_factory=list, max_length=20)
    holdout: float = Field(default=0.0, ge=0, le=0.5)
    outcome_column: str | None = None

    @model_validator(mode="after")
    def _arms(self) -> ExperimentSpec:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or "holdout" in names:
            raise ValueError(f"variant names must be unique and not 'holdout': {names}")
        return self


class GeneratedVariable(_Spec):
    """A template variable a model writes per recipient from `prompt` (Jinja2 over the audience's columns)."""

    prompt: str = Field(min_length=1, max_length=4000)
    fallback: str = Field(min_length=1, max_length=1024)  # sent when the model's answer is refused or missing
    max_chars: int | None = Field(default=None, ge=1, le=1024)  # below the channel's parameter limit


class GenerateSpec(_Spec):
    """Model-written personalisation (pipeline/render/personalise.py) over an OpenAI-compatible endpoint.
    CAMPAIGN_LLM_BASE_URL / CAMPAIGN_LLM_MODEL override `base_url` / `model`; the key is read from `api_key_env`."""

    variables: dict[str, GeneratedVariable] = Field(min_length=1, max_length=8)
    base_url: str = "http://127.0.0.1:8809/v1"
    model: str = Field(default="qwen-plus", min_length=1, max_length=200)
    api_key_env: str = "CAMPAIGN_LLM_API_KEY"
    concurrency: int = Field(default=8, ge=1, le=256)
    max_per_second: float = Field(default=20.0, gt=0, le=10_000)
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_attempts: int = Field(default=4, ge=1, le=10)
    max_tokens: int = Field(default=120, ge=1, le=4096)
    input_usd_per_1m_tokens: float = Field(default=0.4, ge=0)
    output_usd_per_1m_tokens: float = Field(default=1.2, ge=0)

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, value: str) -> str:
        return _env_name(value)


class CampaignSpec(_Spec):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    audience: Path
    channel: ChannelName
    sender: str = Field(min_length=1, description="WhatsApp phone-number-id of the sending number")
    # More sending numbers of the same account: the work is spread across all of them.
    senders: list[str] = Field(default_factory=list)
    template: TemplateSpec
    # template variable -> CSV column it is read from
    variables: dict[str, str] = Field(default_factory=dict)
    rate_limit: RateSpec = RateSpec()
    retry: RetrySpec = RetrySpec()
    provider: ProviderSpec = ProviderSpec()
    # credential role -> name of the environment variable holding it (never the secret itself);
    # roles not listed take the channel's default variable names.
    credentials: dict[str, str] = Field(default_factory=dict)
    # ISO 3166 alpha-2 codes; None means the channel's policy file decides.
    blocked_countries: list[str] | None = None
    service_fee_usd: float | None = Field(default=None, ge=0)
    budget_usd: float | None = Field(default=None, gt=0)
    send_window: SendWindow | None = None
    send_at: SendAt | None = None  # "10:00": each recipient at 10:00 local time
    frequency_cap: FrequencyCap | None = None  # None: the team's default (pipeline/data/controls.yaml)
    approval: ApprovalSpec = ApprovalSpec()
    # Who uploaded this audience: the upload page writes it into the upload's copy of the spec, the drop folder
    # takes the CSV file's owner. Like the person who starts a run, they may not approve it (unless allowed).
    uploaded_by: str | None = Field(default=None, min_length=1, max_length=100)
    # WhatsApp's unique business-initiated recipients per rolling 24 h (per portfolio);
    # None = unlimited.
    messaging_limit: Literal[250, 2000, 10000, 100000] | None = None
    receipts_wait_s: float = Field(default=60.0, ge=0)
    fallback: FallbackSpec | None = None
    prepare: PrepareSpec = PrepareSpec()
    experiment: ExperimentSpec | None = None  # variants and a holdout (issue 20)
    generate: GenerateSpec | None = None  # model-written variables (issue 20)

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not a valid template variable name")
        return value

    @field_validator("credentials")
    @classmethod
    def _credential_env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value.values():
            _env_name(name)
        return value

    def fallback_leg(self) -> CampaignSpec:
        """The spec of the fallback leg: same audience and template, the fallback's channel."""
        if self.fallback is None:
            raise SpecError("fallback: this campaign has no fallback channel")
        fb = self.fallback
        return self.model_copy(update={
            "name": f"{self.name}-fallback"[:64], "channel": fb.channel, "sender": fb.sender, "senders": [],
            "provider": fb.provider, "credentials": fb.credentials, "rate_limit": fb.rate_limit, "fallback": None,
        })

    @property
    def all_senders(self) -> list[str]:
        return [self.sender, *(s for s in self.senders if s != self.sender)]

    def secret(self, role: str, default_env: str) -> str:
        """The credential for `role`, read from the environment variable the spec names."""
        name = self.credentials.get(role, default_env)
        value = os.environ.get(name)
        if not value:
            raise SpecError(f"credentials.{role}: environment variable {name} is not set")
        return value

    @model_validator(mode="after")
    def _rates_within_ceilings(self) -> CampaignSpec:
        refusal = rate_ceiling_refusal("rate_limit.max_per_second", self.rate_limit.max_per_second, self.channel,
                                       self.provider.options, len(self.all_senders))
        if refusal is None and self.fallback is not None:
            fb = self.fallback
            refusal = rate_ceiling_refusal("fallback.rate_limit.max_per_second", fb.rate_limit.max_per_second,
                                           fb.channel, fb.provider.options)
        if refusal is not None:  # its own type: parse_spec shows the line as it is (it names its field)
            raise PydanticCustomError(RATE_CEILING_ERROR, refusal)
        return self

    @field_validator("blocked_countries")
    @classmethod
    def _countries(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        bad = [c for c in value if not re.fullmatch(r"[A-Z]{2}", c)]
        if bad:
            raise ValueError(f"not ISO 3166 alpha-2 codes: {bad}")
        return value


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _problem(error: Any) -> str:
    if error["type"] == RATE_CEILING_ERROR:
        return str(error["msg"])
    return f"{_field_path(error['loc'])}: {error['msg']}"


def parse_spec(data: object, source: str = "<spec>", base_dir: Path | None = None) -> CampaignSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a campaign spec must be a YAML mapping")
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise SpecError(f"{source}: invalid campaign spec: {problems}") from None
    if base_dir is not None and not spec.audience.is_absolute():
        # Paths in a spec are relative to the project root (the working directory) first,
        # then to the spec's own folder.
        if not spec.audience.exists() and (base_dir / spec.audience).exists():
            spec = spec.model_copy(update={"audience": base_dir / spec.audience})
    refusal = chatapp_audience_refusal(spec)
    if refusal:
        raise SpecError(f"{source}: {refusal}")
    return spec


def chatapp_audience_refusal(spec: CampaignSpec, audience: Path | None = None) -> str | None:
    """Why a Chat App Viber campaign cannot send to `audience` (default: the spec's), or None. Alibaba documents
    Chat App's Viber recipients (SendChatappMessage / SendChatappMassMessage `To`) as phone numbers only, so an
    audience of Viber user ids (a `user_id` column and no `phone`) is refused here, not sent and failed per row."""
    path = audience or spec.audience
    if spec.channel != "chatapp" or spec.provider.options.get("channel_type") != "viber" or not path.is_file():
        return None
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        header = next(csv.reader([handle.readline(64 * 1024)]), [])
    columns = {name.strip() for name in header}
    if "user_id" in columns and "phone" not in columns:
        return (f"audience {path}: column user_id: Chat App sends Viber messages to phone numbers only (Alibaba's "
                f"SendChatappMessage To), not Viber user ids; give a phone column, or send by id with channel: viber")
    return None


MAX_SPEC_BYTES_ENV, DEFAULT_MAX_SPEC_BYTES = "CAMPAIGN_MAX_SPEC_BYTES", 1024 * 1024
MAX_SPEC_NODES_ENV, DEFAULT_MAX_SPEC_NODES = "CAMPAIGN_MAX_SPEC_NODES", 100_000
MAX_SPEC_CHARS_ENV, DEFAULT_MAX_SPEC_CHARS = "CAMPAIGN_MAX_SPEC_CHARS", 4 * 1024 * 1024
_END = object()


def read_at_most(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None when it holds more than `limit`: a larger file is never read whole. OSError as
    opening or reading raises it."""
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    return None if len(data) > limit else data


def _read_spec_text(path: Path) -> str:
    """The spec's text, read no further than its bound."""
    limit = positive_setting(MAX_SPEC_BYTES_ENV, DEFAULT_MAX_SPEC_BYTES)
    try:
        data = read_at_most(path, limit)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read campaign spec: {exc.strerror}") from None
    if data is None:
        raise SpecError(f"{path}: the campaign spec is larger than {limit:,} bytes ({MAX_SPEC_BYTES_ENV})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"{path}: line {line} is not valid UTF-8 (byte 0x{data[exc.start]:02X}); save the spec "
                        "as UTF-8 text") from None


def check_expanded_size(data: object, source: str, environ: Mapping[str, str] = os.environ) -> None:
    """Refuses a document that is small as YAML but huge once its aliases are expanded (a "billion laughs": a few
    hundred bytes of `&a`/`*a` that Pydantic, json.dumps or Prefect would expand into gigabytes), or cyclic.

    The walk counts every node (and the characters of every string) each time an alias reaches it, as an expansion
    would, but keeps only one iterator per level and stops as soon as a budget is passed: it never expands anything,
    and costs at most the node budget in steps whatever the document."""
    max_nodes = positive_setting(MAX_SPEC_NODES_ENV, DEFAULT_MAX_SPEC_NODES, environ)
    max_chars = positive_setting(MAX_SPEC_CHARS_ENV, DEFAULT_MAX_SPEC_CHARS, environ)
    nodes = chars = 0
    stack: list[Iterator[object]] = [iter((data,))]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
            continue
        nodes += 1
        if nodes > max_nodes:
            raise SpecError(f"{source}: the campaign spec has more than {max_nodes:,} values with its aliases "
                            f"expanded ({MAX_SPEC_NODES_ENV}); is it a YAML alias bomb, or cyclic?")
        if isinstance(item, str | bytes):
            chars += len(item)
            if chars > max_chars:
                raise SpecError(f"{source}: the campaign spec holds more than {max_chars:,} characters of text with "
                                f"its aliases expanded ({MAX_SPEC_CHARS_ENV})")
        elif isinstance(item, dict):
            stack.append(itertools.chain.from_iterable(item.items()))
        elif isinstance(item, list | tuple | set | frozenset):
            stack.append(iter(item))


def load_spec(path: Path | str) -> CampaignSpec:
    path = Path(path)
    text = _read_spec_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:  # PyYAML composes nested collections recursively: `[[[[...` a thousand deep
        raise SpecError(f"{path}: not valid YAML: collections nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits (Python's int_max_str_digits)
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    check_expanded_size(data, str(path))
    return parse_spec(data, str(path), base_dir=path.parent)
