"""How fast a paused template stops a running campaign through the webhook path alone: the sandbox keeps
accepting the paused template (so only the status webhook can stop the channel), the receiver (its own process)
spools the webhook, the dispatcher's watch ingests it and stops. Figures: `stop_s`, from the moment the receiver
acknowledged the webhook (the sandbox's control call returns then) to the channel stopping; `sent_after_pause`,
what the sandbox accepted after the change (goal ≤ rate × stop_s); `duplicates`, callback data accepted twice
after a resume once the template is APPROVED again (goal 0).

    .venv/bin/python benchmarks/templates.py [--rate 1000] [--messages 20000] [--pause-after-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._dispatch_kit import ENV, SECRET, TOKEN, emit, queue_campaign, receiver_process, whatsapp  # noqa: E402
from pipeline import store  # noqa: E402
from pipeline.channels.template_sync import sync  # noqa: E402
from pipeline.dispatch.engine import dispatch_campaign  # noqa: E402
from pipeline.dispatch.policy import Guards  # noqa: E402
from pipeline.dispatch.template_watch import TemplateWatch  # noqa: E402
from pipeline.receipts.ingest import ingest_spool  # noqa: E402
from pipeline.sandbox.whatsapp import SandboxConfig, create_app  # noqa: E402
from pipeline.sandbox.whatsapp_templates import SandboxNumber, SandboxTemplate  # noqa: E402
from pipeline.servers import serve_in_thread  # noqa: E402
from pipeline.spec import RateSpec, RetrySpec, parse_spec  # noqa: E402

WABA = "102290129340398"


class Timed(TemplateWatch):
    """The watch, noting when it first saw the template stopped."""

    stopped_at: float | None = None

    def poll(self) -> None:
        super().poll()
        if self.reason and self.stopped_at is None:
            self.stopped_at = time.monotonic()


def run(rate: float, messages: int, pause_after_s: float) -> dict[str, float | int]:
    os.environ.update(ENV)
    work = Path(tempfile.mkdtemp(prefix="bench-templates-"))
    (work / "spool").mkdir()
    path = work / "campaigns.sqlite"
    queue_campaign(path, messages)
    with receiver_process(work / "spool") as hook:
        cfg = SandboxConfig(access_token=TOKEN, app_secret=SECRET, webhook_url=f"{hook}/webhooks/whatsapp",
                            throughput_per_s=rate * 2, fail_rate=0.0, enforce_template_status=False,
                            template_set=[SandboxTemplate(name="welcome_offer", components=[
                                {"type": "BODY", "text": "Hi {{1}}, code {{2}}."}])],
                            phone_numbers=[SandboxNumber(id="1065")])
        app = create_app(cfg)
        sandbox = app.state.sandbox
        with serve_in_thread(app) as url, store.connect(path) as db:
            spec = parse_spec({"name": "bench", "audience": "x.csv", "channel": "whatsapp", "sender": "1065",
                               "template": {"name": "welcome_offer", "language": "en_US", "category": "marketing",
                                            "text": "Hi", "body": ["a", "b"]},
                               "provider": {"options": {"waba_id": WABA}}})
            sync(db, spec, base_url=url)

            def dispatch() -> tuple[Timed, object]:
                watch = Timed(db, provider="whatsapp", account=WABA, name="welcome_offer", language="en_US",
                              senders=["1065"], ingest=lambda: ingest_spool(db, work / "spool"))
                result = asyncio.run(dispatch_campaign(
                    db, "bench", whatsapp(url), rate=RateSpec(max_per_second=rate, concurrency=32),
                    retry=RetrySpec(reconcile_grace_s=5), guards=Guards(watch=watch)))
                return watch, result

            out: dict[str, object] = {}
            runner = threading.Thread(target=lambda: out.update(zip(("watch", "result"), dispatch(), strict=True)))
            runner.start()
            client = httpx.Client(base_url=url, trust_env=False, timeout=60)
            deadline = time.monotonic() + pause_after_s
            while time.monotonic() < deadline and runner.is_alive():
                runner.join(0.05)
            client.post("/_sandbox/templates/welcome_offer", json={"status": "PAUSED"})
            acknowledged = time.monotonic()  # the receiver has acknowledged the webhook by now
            runner.join()
            watch = out["watch"]
            assert isinstance(watch, Timed) and watch.stopped_at is not None, "the channel never stopped"
            sent_after = client.get("/_sandbox/templates").json()["sent_after_change"]["welcome_offer:en_US"]
            # Re-approved: a second run sends the rest, each message once.
            client.post("/_sandbox/templates/welcome_offer", json={"status": "APPROVED"})
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ingest_spool(db, work / "spool")
                if db.scalar("SELECT status FROM provider_templates WHERE name = 'welcome_offer'") == "APPROVED":
                    break
                time.sleep(0.2)
            out.clear()
            dispatch()
            client.close()
            return {"rate": rate, "stop_s": round(watch.stopped_at - acknowledged, 3),
                    "sent_after_pause": int(sent_after), "duplicates": sandbox.duplicate_callback_data,
                    "accepted": sandbox.accepted, "messages": messages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--pause-after-s", type=float, default=5.0)
    args = parser.parse_args()
    emit(run(args.rate, args.messages, args.pause_after_s))


if __name__ == "__main__":
    main()
