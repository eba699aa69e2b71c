"""Arms of an experiment: a pure function of campaign id and recipient key, following the weights, balanced by
country on 1M rows; rows rendered with their arm's template."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipeline.render.arms import HOLDOUT, arm_for, arms_of, assign_arms, render_arms
from pipeline.render.limits import RenderLimits
from pipeline.spec import ExperimentSpec, TemplateSpec

BASE = TemplateSpec(name="welcome_offer", language="en_US", category="marketing", text="Hi {{ name }}",
                    body=["{{ name }}"])
B = TemplateSpec(name="welcome_b", language="en_US", category="marketing", text="Hello {{ name }}!!",
                 body=["{{ name }}"])


def _experiment(holdout: float = 0.1, weights: tuple[float, float] = (1, 1)) -> ExperimentSpec:
    return ExperimentSpec(holdout=holdout, variants=[
        {"name": "a", "template": BASE.model_dump(), "weight": weights[0]},
        {"name": "b", "template": B.model_dump(), "weight": weights[1]},
    ])


def test_the_arm_is_a_pure_function_of_campaign_and_recipient():
    arms = arms_of(_experiment(), BASE)
    keys = pl.Series([f"+44770090{i:04d}" for i in range(5000)])
    first = assign_arms("spring", keys, arms)
    # Again, in another order, one at a time: the same arm for each key.
    assert assign_arms("spring", keys.reverse(), arms).reverse().to_list() == first.to_list()
    assert [arm_for("spring", k, arms) for k in keys[:200]] == first[:200].to_list()
    # Another campaign shuffles recipients anew (a keyed hash, not a fixed one).
    other = assign_arms("autumn", keys, arms)
    assert 0.4 < (other != first).mean() < 0.8


def test_shares_follow_holdout_and_weights():
    arms = arms_of(_experiment(holdout=0.2, weights=(3, 1)), BASE)
    assert [a.name for a in arms] == [HOLDOUT, "a", "b"] and arms[0].template is None
    keys = pl.Series([f"k{i}" for i in range(200_000)])
    shares = assign_arms("c", keys, arms).value_counts(normalize=True)
    got = dict(zip(shares["arm"], shares["proportion"], strict=True))
    assert got[HOLDOUT] == pytest.approx(0.2, abs=0.005)
    assert got["a"] == pytest.approx(0.6, abs=0.005) and got["b"] == pytest.approx(0.2, abs=0.005)


def test_no_variants_means_one_control_arm_with_the_spec_template():
    arms = arms_of(ExperimentSpec(holdout=0.05), BASE)
    assert [(a.name, a.template) for a in arms] == [(HOLDOUT, None), ("control", BASE)]
    assert arms[-1].upper == 1.0


def test_arms_are_balanced_by_country_within_one_point_on_a_million_rows():
    # A realistic mix: a large home market and smaller ones down to 5 % (50,000 rows).
    mix = {"GB": 0.40, "IN": 0.15, "US": 0.12, "DE": 0.10, "BR": 0.08, "MX": 0.05, "NG": 0.05, "ID": 0.05}
    countries = [c for c, share in mix.items() for _ in range(int(share * 1_000_000))]
    frame = pl.DataFrame({"country": countries, "key": [f"+{i:012d}" for i in range(len(countries))]})
    arms = arms_of(_experiment(holdout=0.1), BASE)
    frame = frame.with_columns(assign_arms("launch-2026", frame["key"], arms))
    target = {HOLDOUT: 0.10, "a": 0.45, "b": 0.45}
    by_country = frame.group_by("country", "arm").len().with_columns(
        share=pl.col("len") / pl.col("len").sum().over("country"))
    worst = max(abs(share - target[arm]) for arm, share in by_country.select("arm", "share").iter_rows())
    assert by_country.height == len(mix) * 3
    assert worst <= 0.01, f"an arm is {worst:.4f} off its share in a country"


def test_each_arm_is_rendered_with_its_template_and_the_holdout_kept_as_prepared():
    frame = pl.DataFrame({
        "row_number": [2, 3, 4, 5, 6, 7], "name": ["Ann", "Bo", "Cy", "Di", "Ed", "Flo"],
        "phone_e164": [f"+4477009000{i}" for i in range(6)], "region": ["GB"] * 6, "number_type": ["mobile"] * 6,
        "text": ["prepared"] * 6, "params_json": ["{}"] * 6, "segments": [1] * 6, "encoding": ["gsm7"] * 6,
        "arm": [HOLDOUT, "a", "b", "a", "b", HOLDOUT],
    })
    rows, rejects = render_arms(frame, arms_of(_experiment(), BASE), {"name": "name"}, RenderLimits())
    assert rejects.height == 0 and rows["row_number"].to_list() == [2, 3, 4, 5, 6, 7]
    assert rows["text"].to_list() == ["prepared", "Hi Bo", "Hello Cy!!", "Hi Di", "Hello Ed!!", "prepared"]
    assert json.loads(rows["params_json"][2])["body"] == ["Cy"] and rows["params_json"][0] == "{}"
