"""Arms of an experiment: which arm each recipient is in, and their messages rendered with the arm's template.

The arm is a pure function of the campaign id and the recipient key: a keyed BLAKE2b hash (the key derived
from the campaign id) of the key read as a number in [0, 1), cut at the arms' cumulative shares. Nothing is
drawn and nothing depends on the other rows, so a re-run, a resume after a crash, a later run with more rows
and the fallback leg (which asks with the first leg's campaign id) all find the same arm. The hash's output is
uniform and independent of the country, so each country's split follows the weights with a binomial spread:
sqrt(p(1-p)/n), 0.22 percentage points for a country of 50,000 rows (tests/render/test_arms.py measures it on
1M rows). Hands the flow's queue step (pipeline/dispatch/experiment.py) a frame with `arm` and each row rendered
with its arm's template.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

from pipeline.render.limits import RenderLimits
from pipeline.render.segments import with_segments
from pipeline.render.templates import render_messages
from pipeline.spec import ExperimentSpec, TemplateSpec

HOLDOUT = "holdout"
CONTROL = "control"  # the one sent arm of an experiment without variants: the spec's own template
_SCALE = float(2**64)
# Columns a render adds: dropped before a row is rendered again with its arm's template.
RENDERED = ("text", "params_json", "segments", "encoding")


@dataclass(frozen=True)
class Arm:
    name: str
    template: TemplateSpec | None  # None: the holdout, sent nothing
    upper: float  # the arm holds the units in [previous arm's upper, upper)


def arms_of(experiment: ExperimentSpec, template: TemplateSpec) -> list[Arm]:
    """The arms in a fixed order, holdout first: its share is exactly `holdout`; the rest is split by weight."""
    arms, upper = [], 0.0
    if experiment.holdout > 0:
        upper = experiment.holdout
        arms.append(Arm(HOLDOUT, None, upper))
    variants = [(v.name, v.template, v.weight) for v in experiment.variants] or [(CONTROL, template, 1.0)]
    total = sum(weight for _, _, weight in variants)
    cumulative = 0.0
    for name, arm_template, weight in variants:
        cumulative += weight
        arms.append(Arm(name, arm_template, experiment.holdout + (1 - experiment.holdout) * cumulative / total))
    # The last arm closes at 1 exactly, whatever the float sums gave.
    arms[-1] = Arm(arms[-1].name, arms[-1].template, 1.0)
    return arms


def _hash_key(campaign_id: str) -> bytes:
    # BLAKE2b keys are at most 64 bytes; any campaign id becomes one of 32.
    return hashlib.sha256(f"campaign-arms|{campaign_id}".encode()).digest()


def unit(campaign_id: str, recipient_key: str) -> float:
    """The recipient's place in [0, 1) for this campaign."""
    digest = hashlib.blake2b(recipient_key.encode(), key=_hash_key(campaign_id), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def arm_for(campaign_id: str, recipient_key: str, arms: list[Arm]) -> str:
    place = unit(campaign_id, recipient_key)
    return next(arm.name for arm in arms if place < arm.upper)


def assign_arms(campaign_id: str, keys: pl.Series, arms: list[Arm]) -> pl.Series:
    """The arm of every key (a String series), in its order."""
    key = _hash_key(campaign_id)
    uppers = [arm.upper for arm in arms]
    names = [arm.name for arm in arms]
    out = []
    for recipient in keys.to_list():
        place = int.from_bytes(hashlib.blake2b(recipient.encode(), key=key, digest_size=8).digest(), "big") / _SCALE
        i = 0
        while place >= uppers[i]:
            i += 1
        out.append(names[i])
    return pl.Series("arm", out, dtype=pl.String)


def render_arms(
    accepted: pl.DataFrame, arms: list[Arm], variables: dict[str, str], limits: RenderLimits
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows, rejects): every sent arm's rows rendered again with its template (the holdout's rows as they were
    prepared: nothing is sent to them); a row its arm's template cannot render is a reject, as in preparation."""
    parts, rejects = [], []
    for arm in arms:
        rows = accepted.filter(pl.col("arm") == arm.name)
        if arm.template is None or rows.is_empty():
            parts.append(rows)
            continue
        rendered, failed = render_messages(rows.drop(RENDERED, strict=False), arm.template, variables, limits)
        parts.append(with_segments(rendered).select(accepted.columns))
        rejects.append(failed)
    frame = pl.concat(parts, how="vertical_relaxed").sort("row_number") if parts else accepted
    return frame, (pl.concat(rejects) if rejects else pl.DataFrame())
