"""Alibaba SMS's length bound: the signature it adds (in 【】 or [] brackets) plus the content is at most
500 characters (docs/providers.md §6.1), and Alibaba refuses a longer message. The signature depends on the
row's country (provider.options.sender_ids), so the bound is checked on the rendered frame, per row."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pipeline.spec import CampaignSpec

ALIBABA_MAX_CHARS = 500
BRACKETS = 2  # 【】 in mainland China, [] elsewhere: two characters either way


@dataclass(frozen=True)
class SignedSms:
    """The signatures a row's text is sent with, and what signature + text may add up to."""

    sign_name: str
    by_country: tuple[tuple[str, str], ...] = ()  # (ISO country, sign name), as the channel picks them
    max_chars: int = ALIBABA_MAX_CHARS

    @classmethod
    def of_spec(cls, spec: CampaignSpec) -> SignedSms | None:
        """The bound of an Alibaba SMS spec; None for any other channel or provider."""
        options = spec.provider.options
        if spec.channel != "sms" or options.get("provider") != "alibaba_sms":
            return None
        sender_ids = options.get("sender_ids")
        by_country = sender_ids if isinstance(sender_ids, dict) else {}  # the channel refuses a wrong one
        # Each sender sends its share of rows without a country sign name: the longest one bounds them all.
        return cls(sign_name=max(spec.all_senders, key=len),
                   by_country=tuple((str(k).upper(), str(v)) for k, v in by_country.items()))

    def reject_over(self, out: pl.DataFrame) -> pl.DataFrame:
        """`out` (text, _reason, _detail and, when validated, region) with the rows still sendable whose
        signature + text is over the bound rejected message_too_long."""
        if "region" in out.columns and self.by_country:
            sign = pl.col("region").replace_strict(dict(self.by_country), default=self.sign_name,
                                                   return_dtype=pl.String)
        else:
            sign = pl.lit(self.sign_name)
        length = pl.col("text").str.len_chars() + sign.str.len_chars() + BRACKETS
        over = pl.col("_reason").is_null() & pl.col("text").is_not_null() & (length > self.max_chars)
        detail = pl.format(f"text with its signature [{{}}] renders {{}} characters, over the {self.max_chars:,} "
                           "an Alibaba SMS may hold", sign, length)
        return out.with_columns(
            _reason=pl.when(over).then(pl.lit("message_too_long")).otherwise(pl.col("_reason")),
            _detail=pl.when(over).then(detail).otherwise(pl.col("_detail")),
        )
