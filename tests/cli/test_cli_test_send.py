"""`campaign test-send`: rows rendered as the campaign renders them, sent to seeds over the WhatsApp sandbox on
loopback, kept out of the campaign's counts, caps and costs; its bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.audience.frequency import capped_recipients, frequency_cap_for
from pipeline.channels import channel_for
from pipeline.cli.parser import main
from pipeline.costs.summary import campaign_summary, format_summary
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.dispatch.preparation import prepare_campaign
from pipeline.dispatch.test_sends import costs_of_test_sends
from pipeline.render.arms import arms_of, assign_arms
from pipeline.sandbox.whatsapp import create_app
from pipeline.spec import load_spec
from pipeline.store import Store
from tests.helpers.channels import serving
from tests.helpers.whatsapp import TOKEN, config

ROOT = Path(__file__).resolve().parents[2]
AUDIENCE = """phone,country,first_name,city,coupon,opt_in
+33 6 12 36 56 37,FR,Hugo,Paris,CODE-1,true
not a number,,Ann,Nowhere,CODE-2,true
+254 712 175153,KE,Wanjiru,Mombasa,CODE-3,yes
+34 612 345 678,ES,Leo,Madrid,CODE-4,true
+44 7400 123456,GB,Amy,London,CODE-5,true
"""
# The first seed is also the audience's first recipient: a test must not cap them for the campaign.
SEEDS = "to,name\n+33612365637,Hugo's desk phone\n+447911123456,QA\n"


@pytest.fixture
def setup(db: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", TOKEN)
    (tmp_path / "audience.csv").write_text(AUDIENCE)
    spec = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    spec["audience"] = str(tmp_path / "audience.csv")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "seeds.csv").write_text(SEEDS)
    url = str(db.path) if db.path else db.url
    with serving(create_app, config()) as (base, sandbox):
        yield tmp_path, url, base, sandbox


def send_test(db: Store, setup, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    tmp, url, base, _ = setup
    code = main(["test-send", str(tmp / "spec.yaml"), "--to", str(tmp / "seeds.csv"), "--db", url,
                 "--provider-base-url", base, *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_seeds_get_the_rendered_messages_kept_apart(db: Store, setup, capsys: pytest.CaptureFixture[str]) -> None:
    tmp, url, base, sandbox = setup
    code, out, err = send_test(db, setup, capsys)
    assert code == 0, err
    # Three sendable rows (2, 4, 5: row 3 is not a number) to each of two seeds, over the sandbox.
    sent = [(to, data) for _, to, data, _, _ in sandbox.messages]
    assert sorted(to for to, _ in sent) == sorted(["33612365637"] * 3 + ["447911123456"] * 3)
    # Each seed named masked with the provider's message id; no number in full.
    for wamid, _, _, _, _ in sandbox.messages:
        assert wamid in out
    assert "+33******637" in out and "+44*******456" in out
    assert "33612365637" not in out and "447911123456" not in out
    assert "6 of 6 test messages sent" in out

    # Exactly what the campaign sends those rows: its own preparation and payloads, addressed to the seed.
    spec = load_spec(tmp / "spec.yaml")
    prepared = prepare_campaign(spec, spec.name, url, tmp / "prepared")
    assert "+33612365637" in set(prepared.accepted["phone_e164"])  # the test did not cap row 2's recipient
    assert "+33612365637" not in capped_recipients(db, frequency_cap_for(spec), exclude_campaign="another")
    register_campaign(db, spec, spec.name)
    enqueue_messages(db, spec, spec.name, channel_for(spec, base_url=base), prepared.accepted)
    with db.read() as conn:
        campaign = {row[0]: json.loads(row[1]) for row in conn.exec_driver_sql(
            "SELECT recipient_key, payload_json FROM outbox WHERE campaign_id = 'welcome'")}
        tests = conn.exec_driver_sql("SELECT row_number, seed, payload_json, cost_usd, status FROM test_sends "
                                     "ORDER BY row_number, seed").all()
    assert len(campaign) == 4  # the campaign's own messages only: the tests are not among them
    by_row = dict(zip(prepared.accepted["row_number"], prepared.accepted["phone_e164"], strict=True))
    assert sorted({row for row, *_ in tests}) == [2, 4, 5]
    for row, seed, payload, _, status in tests:
        assert status == "sent"
        ours, theirs = json.loads(payload), campaign[by_row[row]]
        assert ours["to"] == seed.lstrip("+")
        assert ours["template"] == theirs["template"]  # same template, language and rendered parameters
    # Costs apart: FR and GB marketing prices of the seeds, summed for the campaign's tests.
    costs = costs_of_test_sends(db, "welcome")
    assert costs["messages"] == 6 and costs["sent"] == 6 and costs["cost_usd"] > 0
    assert f"USD {costs['cost_usd']:.4f}" in out
    # The campaign's report counts none of them and shows them apart.
    summary = campaign_summary(db, "welcome")
    assert (summary["sent"], summary["cost_usd"], summary["queued"]) == (0, 0.0, 4)
    assert (summary["test_sends"], summary["test_sends_cost_usd"]) == (6, float(costs["cost_usd"]))
    assert "test sends (apart)" in format_summary(summary)


def test_chosen_rows(db: Store, setup, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, _, sandbox = setup
    code, out, err = send_test(db, setup, capsys, "--row-numbers", "6")
    assert code == 0, err
    assert out.count("row 6 ->") == 2 and "row 2" not in out
    with db.read() as conn:
        payloads = [json.loads(p) for (p,) in conn.exec_driver_sql("SELECT payload_json FROM test_sends")]
    assert {p["template"]["components"][0]["parameters"][0]["text"] for p in payloads} == {"Amy"}
    # A row the campaign would not send to is refused with its reason; nothing more is sent.
    code, out, err = send_test(db, setup, capsys, "--row-numbers", "3")
    assert code == 2 and "row 3: the campaign would not send to it" in err
    code, out, err = send_test(db, setup, capsys, "--row-numbers", "40")
    assert code == 2 and "row 40: not a row of the audience" in err
    assert len(sandbox.messages) == 2


@pytest.mark.parametrize(("seeds", "env", "extra", "says"), [
    ("to\n+33612365637\nnot-a-phone\n", {}, [], "seeds.csv: row 3, field to: not a phone number"),
    ("to\n+3361\n", {}, [], "seeds.csv: row 2, field to: not a valid phone number"),
    ("to\n" + "".join(f"+3361236560{i}\n" for i in range(3)), {"CAMPAIGN_TEST_SEND_MAX_SEEDS": "2"}, [],
     "more than 2 seeds"),
    ("to\n+33612365637" + "0" * 300 + "\n", {}, [], "row 2, field to: longer than 256 characters"),
    ("to\n" + "+33612365637\n" * 6000, {}, [], "more than the 65536 a seeds file may have"),
    ("phone_number\n+33612365637\n", {}, [], "row 1: no address column"),
    (SEEDS, {}, ["--rows", "11"], "11 rows asked, at most 10"),
    (SEEDS, {"CAMPAIGN_TEST_SEND_MAX_MESSAGES": "5"}, [], "3 rows x 2 seeds = 6 messages, at most 5"),
])
def test_bounds(db: Store, setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                seeds: str, env: dict[str, str], extra: list[str], says: str) -> None:
    tmp, _, _, sandbox = setup
    (tmp / "seeds.csv").write_text(seeds)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = send_test(db, setup, capsys, *extra)
    assert code == 2 and says in err, err
    assert err.count("\n") == 1
    assert sandbox.accepted == 0


def _with_variants(tmp: Path) -> None:
    """The spec with an experiment: variant a the spec's own template, b another template filling its body in
    another order (so its parameters show it was rendered with b's template)."""
    spec = yaml.safe_load((tmp / "spec.yaml").read_text())
    b = {**spec["template"], "name": "welcome_b", "text": "{{ city }}: {{ first_name }}, {{ code }}",
         "body": ["{{ city }}", "{{ first_name }}", "{{ code }}"]}
    spec["experiment"] = {"variants": [{"name": "a", "template": spec["template"]}, {"name": "b", "template": b}]}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))


def _sent(db: Store) -> list[tuple[int, str, list[str]]]:
    """(row, template name, body parameters) of every test message, by row and template."""
    with db.read() as conn:
        rows = conn.exec_driver_sql("SELECT row_number, payload_json FROM test_sends").all()
    out = []
    for row, payload in rows:
        template = json.loads(payload)["template"]
        body = next(c for c in template["components"] if c["type"] == "body")
        out.append((row, template["name"], [p["text"] for p in body["parameters"]]))
    return sorted(out)


def test_each_variant_is_tested_with_its_own_template(db: Store, setup, capsys: pytest.CaptureFixture[str]) -> None:
    tmp, url, _, sandbox = setup
    _with_variants(tmp)
    spec = load_spec(tmp / "spec.yaml")
    prepared = prepare_campaign(spec, "ab", url, tmp / "prepared")
    arms = dict(zip(prepared.accepted["row_number"], assign_arms(
        "ab", prepared.accepted["phone_e164"], arms_of(spec.experiment, spec.template)), strict=True))
    assert set(arms.values()) == {"a", "b"}  # campaign ab: rows in both arms
    # By default each variant's first row of its own arm (--rows 1), with its own template and parameters.
    code, out, err = send_test(db, setup, capsys, "--rows", "1", "--campaign-id", "ab")
    assert code == 0, err
    sent = _sent(db)
    assert {name for _, name, _ in sent} == {"welcome_offer", "welcome_b"} and len(sent) == 4  # 2 variants x 2 seeds
    for row, name, params in sent:
        assert arms[row] == ("a" if name == "welcome_offer" else "b")
        city_first = params[0] in {"Paris", "Mombasa", "Madrid", "London"}
        assert city_first == (name == "welcome_b")  # b's body order: rendered with b's template
    assert "(variant a) ->" in out and "(variant b) ->" in out and "4 of 4 test messages sent" in out
    # --variant b: b's only. Campaign `welcome` puts every row in b: a is still tested, on the first row.
    code, out, err = send_test(db, setup, capsys, "--variant", "b", "--rows", "1")
    assert code == 0, err
    assert [name for _, name, _ in _sent(db)].count("welcome_b") == 4 and "(variant a)" not in out
    code, out, err = send_test(db, setup, capsys, "--variant", "a", "--rows", "1")
    assert code == 0 and out.count("row 2 (variant a) ->") == 2, err
    # Named rows go out with their own arm's template, or the named variant's.
    row = next(r for r, arm in arms.items() if arm == "a")
    code, out, err = send_test(db, setup, capsys, "--row-numbers", str(row), "--variant", "b")
    assert code == 0, err
    assert out.count(f"row {row} (variant b) ->") == 2
    # A variant the spec does not have is refused, naming those it has; nothing more is sent.
    code, _, err = send_test(db, setup, capsys, "--variant", "c")
    assert code == 2 and "--variant c: not a variant of the spec (a, b)" in err
    assert len(sandbox.messages) == 10


def test_a_variant_without_an_experiment_is_refused(db: Store, setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = send_test(db, setup, capsys, "--variant", "a")
    assert code == 2 and "--variant a: the spec has no experiment variants" in err
    assert setup[3].accepted == 0
