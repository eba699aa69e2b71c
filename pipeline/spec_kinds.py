"""The parts of a campaign spec's template beyond its text (pipeline/spec.py holds the spec itself): media and
location headers, buttons, carousel cards and the free-form session message. Pydantic, frozen, extra fields
refused; a wrong part fails the spec with its field named."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MediaHeader(_Spec):
    """A template's media header: the file by `link` (Jinja2 over the campaign's variables, so a column can give
    each recipient their own) or by an uploaded media `id`; a document may name its `filename`. A location
    header gives `latitude`, `longitude` and optionally `name` and `address` instead."""

    format: Literal["image", "video", "document", "location"]
    link: str | None = Field(default=None, min_length=1)
    id: str | None = Field(default=None, min_length=1)
    # A local file, uploaded once per campaign through the provider's media endpoint; its id is then reused.
    file: Path | None = None
    filename: str | None = Field(default=None, min_length=1, max_length=240)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    name: str | None = Field(default=None, max_length=1000)
    address: str | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _one_source(self) -> MediaHeader:
        if self.format == "location":
            if self.latitude is None or self.longitude is None or self.link or self.id or self.file or self.filename:
                raise ValueError("a location header takes 'latitude' and 'longitude' (and 'name', 'address') only")
            return self
        if sum(x is not None for x in (self.link, self.id, self.file)) != 1:
            raise ValueError("a media header needs exactly one of 'link', 'id' and 'file'")
        if self.filename and self.format != "document":
            raise ValueError("only a document header takes 'filename'")
        if self.latitude is not None or self.longitude is not None or self.name or self.address:
            raise ValueError(f"an {self.format} header takes no location")
        return self


# Buttons whose value is rendered per recipient from `text` (Jinja2): a URL's dynamic suffix, a copy-code
# button's coupon code, a flow button's flow token.
RENDERED_BUTTONS = frozenset({"url", "copy_code", "flow"})


class ButtonSpec(_Spec):
    sub_type: Literal["quick_reply", "url", "copy_code", "flow", "phone_number"]
    # quick_reply buttons carry a fixed payload; url / copy_code / flow buttons a Jinja2 `text` (URL suffix,
    # coupon code, flow token); a phone_number button is fixed in the template and takes nothing at send time.
    payload: str | None = None
    text: str | None = None
    # A quick reply that opts the recipient out: a tap suppresses them on the channel, as a STOP reply does.
    opt_out: bool = False
    # A flow button's initial data (Meta's `flow_action_data`), the same for every recipient.
    flow_action_data: dict[str, str] | None = None
    # Chat App: the name of the variable the template's copy-code button declares (its CouponCode "$(name)"), under
    # which the coupon travels in TemplateParams; None: "couponCode", the example of Alibaba's SDK.
    variable: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

    @model_validator(mode="after")
    def _one_value(self) -> ButtonSpec:
        if self.sub_type == "quick_reply" and not self.payload:
            raise ValueError("a quick_reply button needs 'payload'")
        if self.sub_type in RENDERED_BUTTONS and not self.text:
            raise ValueError(f"a {self.sub_type} button needs 'text'")
        if self.sub_type != "quick_reply" and self.payload:
            raise ValueError(f"a {self.sub_type} button takes no 'payload'")
        if self.flow_action_data is not None and self.sub_type != "flow":
            raise ValueError("only a flow button takes 'flow_action_data'")
        if self.opt_out and self.sub_type != "quick_reply":
            raise ValueError("only a quick_reply button can be an opt-out")
        if self.variable is not None and self.sub_type != "copy_code":
            raise ValueError("only a copy_code button takes 'variable' (its Chat App template variable)")
        return self


class ReplyButton(_Spec):
    id: str = Field(min_length=1, max_length=256)
    title: str = Field(min_length=1, max_length=20)


class ListRow(_Spec):
    id: str = Field(min_length=1, max_length=200)
    title: str = Field(min_length=1, max_length=24)
    description: str | None = Field(default=None, max_length=72)


class ListSection(_Spec):
    title: str | None = Field(default=None, max_length=24)
    rows: list[ListRow] = Field(min_length=1, max_length=10)


class SessionMessage(_Spec):
    """A free-form message for recipients whose 24-hour customer-service window is open (WhatsApp, and WhatsApp
    through Chat App): the template's rendered `text` as its text, caption or body. Recipients outside the window
    get the template itself (`outside_window: template`) or are rejected `outside_window` (`reject`)."""

    kind: Literal["text", "image", "video", "document", "buttons", "list"] = "text"
    link: str | None = Field(default=None, min_length=1)  # the media's URL (image, video, document)
    filename: str | None = Field(default=None, min_length=1, max_length=240)
    buttons: list[ReplyButton] = Field(default_factory=list, max_length=3)  # kind buttons: reply buttons
    list_button: str | None = Field(default=None, min_length=1, max_length=20)  # kind list: the menu's label
    sections: list[ListSection] = Field(default_factory=list, max_length=10)  # kind list
    outside_window: Literal["template", "reject"] = "template"

    @model_validator(mode="after")
    def _complete(self) -> SessionMessage:
        media = self.kind in ("image", "video", "document")
        if media != (self.link is not None):
            raise ValueError("an image, video or document message needs 'link'; other kinds take none")
        if (self.kind == "buttons") != bool(self.buttons):
            raise ValueError("a buttons message needs 1 to 3 'buttons'; other kinds take none")
        if (self.kind == "list") != bool(self.sections and self.list_button):
            raise ValueError("a list message needs 'list_button' and 'sections'; other kinds take neither")
        if self.filename and self.kind != "document":
            raise ValueError("only a document message takes 'filename'")
        return self


class CardSpec(_Spec):
    """One card of a carousel template: a media header (image or video, by link or id), body parameters and up to
    two buttons (quick reply or URL), each rendered per recipient like the template's own."""

    header_media: MediaHeader
    body: list[str] = Field(default_factory=list)
    buttons: list[ButtonSpec] = Field(default_factory=list, max_length=2)

    @model_validator(mode="after")
    def _card_kinds(self) -> CardSpec:
        if self.header_media.format not in ("image", "video") or self.header_media.file is not None:
            raise ValueError("a card's header is an image or a video, by 'link' or 'id'")
        if any(b.sub_type not in ("quick_reply", "url") for b in self.buttons):
            raise ValueError("a card's buttons are quick_reply or url")
        return self
