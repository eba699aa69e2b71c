"""What the approver reads above the form (pipeline/dispatch/approvals.py, `approval_brief`): with model-written
values (issue 20), their counts, fallbacks by reason, cost and a masked sample, the same lines the personalise
artifact shows; without them, no such section."""

from __future__ import annotations

import polars as pl

from pipeline.dispatch.approvals import approval_brief

ACCEPTED = pl.DataFrame({"phone_e164": ["+447700900123"], "text": ["Hi Ann, your code W-1"]})
ESTIMATE = {"messages": 1, "total_usd": 0.07}


def test_the_model_written_values_are_shown_masked_with_their_counts() -> None:
    generation = {"generated": 5, "fallbacks": {"link": 2, "phone_number": 1}, "cost_usd": 0.0123,
                  "samples": [("opener", "Good to have you with us"), ("opener", "Write to ann@example.com"),
                              ("opener", "Call +44 7700 900456")]}
    brief = approval_brief({"invalid_number": 1}, ACCEPTED, ESTIMATE, generation=generation)
    section = brief.split("### Model-written values", 1)[1]
    assert "5 written by the model, 3 fell back to the fixed text (link: 2, phone_number: 1)" in section
    assert "USD 0.0123 for the model" in section
    assert "- `opener`: Good to have you with us" in section
    assert "a***@example.com" in section and "ann@example.com" not in section  # masked again, whatever came in
    assert "+44*******456" in section and "7700 900456" not in section


def test_the_sample_is_bounded_and_absent_without_a_model() -> None:
    samples = [("opener", f"Hello {i}") for i in range(9)]
    generation = {"generated": 9, "fallbacks": {}, "cost_usd": 0, "samples": samples}
    brief = approval_brief({}, ACCEPTED, ESTIMATE, generation=generation, sample_size=3)
    assert [line for line in brief.splitlines() if line.startswith("- `opener`")] == [
        "- `opener`: Hello 0", "- `opener`: Hello 1", "- `opener`: Hello 2"]
    assert "Model-written values" not in approval_brief({}, ACCEPTED, ESTIMATE)
