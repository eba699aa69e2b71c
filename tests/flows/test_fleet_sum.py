"""The campaign's result from its groups' results (flows/fleet.py add_up), as they travel: each group run publishes
its result as a table artifact, the campaign flow reads it back through the API and adds them up. What waits (a
send window that closed) and when it may go must survive the trip, or the continuation (flows/continuation.py) is
never scheduled in group mode. Against the session's Prefect server: real artifacts, a real flow context."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.continuation import schedule_continuation
from flows.fleet import RESULT_DESCRIPTION, add_up, artifact_row, group_start_timeout_s, read_result, result_dict
from pipeline.dispatch.policy import DispatchResult
from pipeline.spec import SpecError
from tests.helpers.prefect import PrefectServer

REOPEN = datetime(2030, 1, 6, 9, 0, tzinfo=UTC)


@flow(name="group-result-test")
def publish(result: dict[str, Any], group: int) -> str:
    create_table_artifact([artifact_row(result) | {"group": group, "senders": "x"}], description=RESULT_DESCRIPTION)
    return str(flow_run.id)


@flow(name="continuation-test")
def continue_from(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    return schedule_continuation("c", "spec.yaml", add_up(results, {"sent": 5, "queued": 7}))


def test_what_waits_and_when_survive_the_groups_artifacts_and_schedule_the_continuation(
    prefect_harness: PrefectServer,
) -> None:
    waiting = DispatchResult(total=8, sent=3, waiting=5, continue_at=REOPEN + timedelta(hours=1),
                             lanes_paused={"1065000002": "number flagged"}, states={"queued": 5},
                             busiest_second={"1065000001": 41})
    # A replacement run of the same group sent for 1065000001 too: the sender's busiest second is the worse of the two.
    earlier = DispatchResult(total=4, sent=2, waiting=2, continue_at=REOPEN, states={"queued": 2},
                             busiest_second={"1065000001": 40, "1065000003": 39})
    done = DispatchResult(total=2, sent=2, states={"sent": 2})
    with temporary_settings(updates={PREFECT_API_URL: prefect_harness.api}):
        ids = [publish(result_dict(r), i) for i, r in enumerate([waiting, earlier, done])]
        with get_client(sync_client=True) as client:
            results = [read_result(client, UUID(run_id)) for run_id in ids]
        total = add_up(results, {"sent": 7, "queued": 7})
        assert (total.sent, total.total, total.waiting) == (7, 14, 7)
        assert total.continue_at == REOPEN  # the earliest: the continuation sends what can go then
        assert total.lanes_paused == {"1065000002": "number flagged"}
        assert total.busiest_second == {"1065000001": 41, "1065000003": 39}
        # Not from a deployment: nothing could start it later, and the run says when and how (flows/continuation.py).
        continues = continue_from(results)
    assert continues == {"waiting": 7, "continue_at": REOPEN.isoformat(), "flow_run_id": None}


def test_the_group_start_timeout_setting_is_a_positive_number_of_seconds(monkeypatch) -> None:
    monkeypatch.delenv("CAMPAIGN_GROUP_START_TIMEOUT_S", raising=False)
    assert group_start_timeout_s() == 300.0
    monkeypatch.setenv("CAMPAIGN_GROUP_START_TIMEOUT_S", "45")
    assert group_start_timeout_s() == 45.0
    for bad in ("0", "-3", "soon", "nan", "inf"):  # inf: a group run never given up on
        monkeypatch.setenv("CAMPAIGN_GROUP_START_TIMEOUT_S", bad)
        with pytest.raises(SpecError, match=f"^CAMPAIGN_GROUP_START_TIMEOUT_S: '{bad}' is not a positive number of "
                                            "seconds$"):
            group_start_timeout_s()
