"""Waiting for a campaign's lease (pipeline/dispatch/locks.py, `wait_s`): a run told to wait takes the lease as soon
as its holder releases it; one kept out longer than its bound is refused, saying how long it waited; without a
bound the refusal is immediate, as before. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.dispatch.locks import CampaignLocked, LockHolder, campaign_lock, current_holder
from pipeline.store import Store
from tests.helpers.waiting import wait_for


def test_a_waiting_run_takes_the_lease_once_the_holder_releases_it(db: Store) -> None:
    told: list[LockHolder | None] = []
    asked = threading.Event()

    def second() -> str:
        def on_wait(holder: LockHolder | None) -> None:
            told.append(holder)
            asked.set()

        with campaign_lock(db, "spring", flow_run_id="run-2", wait_s=60, ttl_s=3, on_wait=on_wait) as lease:
            return lease.holder.flow_run_id or ""

    with ThreadPoolExecutor(1) as pool:
        with campaign_lock(db, "spring", flow_run_id="run-1", ttl_s=3):
            waiting = pool.submit(second)
            wait_for(asked.is_set, timeout_s=30, what="the second run to find the lease held")
            assert not waiting.done()  # it waits while the first holds the lease
        assert waiting.result(timeout=30) == "run-2"
    assert [h.flow_run_id for h in told if h] == ["run-1"]
    assert current_holder(db, "spring") is None  # released after its block


def test_a_run_kept_out_longer_than_its_bound_is_refused_saying_how_long_it_waited(db: Store) -> None:
    with campaign_lock(db, "spring", flow_run_id="run-1", ttl_s=3):
        started = time.monotonic()
        with pytest.raises(CampaignLocked, match=r"still, after waiting 2 s for it\): flow run \(run-1\)") as refused, \
                campaign_lock(db, "spring", flow_run_id="run-2", wait_s=2, ttl_s=3):
            pass
        waited = time.monotonic() - started
    assert 2 <= waited < 10 and refused.value.waited_s == 2
    assert refused.value.holder is not None and refused.value.holder.flow_run_id == "run-1"


def test_without_a_bound_the_refusal_is_immediate(db: Store) -> None:
    with campaign_lock(db, "spring", flow_run_id="run-1", ttl_s=30):
        started = time.monotonic()
        with pytest.raises(CampaignLocked, match="is already running: flow run") as refused, \
                campaign_lock(db, "spring", flow_run_id="run-2"):
            pass
    assert time.monotonic() - started < 2 and refused.value.waited_s == 0
