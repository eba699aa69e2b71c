"""Dispatch sharded by sender across processes: each shard its own ledger file and rate limits;
the campaign's ledger stays consistent after the merge, and nothing is sent twice."""

from __future__ import annotations

import httpx

from pipeline.dispatch import shards
from pipeline.sandbox.process import sandbox_process
from pipeline.sandbox.whatsapp import SandboxConfig
from tests.helpers.whatsapp import queue


def test_plan_keeps_each_sender_in_one_shard():
    assert shards.plan_shards(["a", "b", "c"], 2) == [["a", "c"], ["b"]]
    assert shards.plan_shards(["a"], 4) == [["a"]]


def test_two_processes_two_senders_then_merge(con, tmp_path):
    queue(con, 200, senders=["111", "222"])
    plan = shards.plan_shards(["111", "222"], 2)
    paths = shards.split(con, "t", tmp_path / "shards", plan)
    config = SandboxConfig(access_token="test-token", app_secret="test-app-secret", throughput_per_s=5000)
    with sandbox_process(config) as url:
        results = shards.run_shards(paths, "t", spool_dir=None, base_url=url)
        stats = httpx.get(f"{url}/_sandbox/stats", params={"messages": 1}).json()
    assert [r["exit_code"] for r in results] == [0, 0]
    assert sorted(r["sent"] for r in results) == [100, 100]
    assert {tuple(r["senders"]) for r in results} == {("111",), ("222",)}

    assert shards.merge(con, "t", paths) == 200
    states = dict(con.execute("SELECT state, count(*) FROM outbox GROUP BY 1").fetchall())
    assert states == {"sent": 200}
    ours = {r[0] for r in con.execute("SELECT message_id FROM outbox").fetchall()}
    assert {m["biz_opaque_callback_data"] for m in stats["messages"]} == ours
    assert stats["duplicate_callback_data"] == 0
    # Merging again changes nothing; the transitions were taken once.
    assert shards.merge(con, "t", paths) == 0
    assert con.execute("SELECT count(*) FROM outbox_transitions").fetchall()[0][0] == 400
