"""The WhatsApp sandbox's templates and numbers: Meta's management endpoints (docs/providers.md §1.11) served from
the template and number set the sandbox is configured with, the answers a send gets for a template that is not
APPROVED (132001 / 132015 / 132016), and the signed webhooks Meta posts when a template or number changes
(`message_template_status_update`, `template_category_update`, `message_template_quality_update`,
`phone_number_quality_update`).

Tests and benchmarks change a template or number with `POST /_sandbox/templates/{name}` and
`POST /_sandbox/numbers/{id}`: the change is made, its webhook posted, and the call answers once the receiver has
acknowledged it (so `reached the receiver` is a moment the caller knows).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline.sandbox.webhooks import sign

log = logging.getLogger(__name__)


class SandboxTemplate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    language: str = "en_US"
    status: str = "APPROVED"
    category: str = "MARKETING"
    quality: str = "GREEN"
    components: list[dict[str, Any]] = Field(default_factory=list)


class SandboxNumber(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    display_phone_number: str = "15550783881"
    verified_name: str = "Acme"
    status: str = "CONNECTED"
    quality_rating: str = "GREEN"
    messaging_limit_tier: str = "TIER_10K"
    code_verification_status: str = "VERIFIED"


def body_component(text: str) -> dict[str, Any]:
    return {"type": "BODY", "text": text}


class TemplateSet:
    """The sandbox's templates (by name and language) and numbers, and the webhooks their changes post."""

    def __init__(self, templates: list[SandboxTemplate], numbers: list[SandboxNumber], *, waba_id: str,
                 app_secret: str, webhook_url: str | None, pause_after: int | None) -> None:
        self.templates: dict[tuple[str, str], dict[str, Any]] = {}
        self._ids = itertools.count(1_000_000_000_000)
        for t in templates:
            self.templates[(t.name, t.language)] = {**t.model_dump(), "id": str(next(self._ids))}
        self.numbers = {n.id: n.model_dump() for n in numbers}
        self.waba_id, self.app_secret, self.webhook_url = waba_id, app_secret, webhook_url
        self.pause_after = pause_after
        self.sent_by_template: dict[tuple[str, str], int] = {}
        self.sent_after_change: dict[tuple[str, str], int] = {}  # accepted since the last status change
        self.webhooks_posted = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ sends

    def check_send(self, name: str, language: str) -> tuple[int, str, str, str] | str:
        """The pricing category of a send of this template, or (code, message, details, http status) to refuse."""
        t = self.templates.get((name, language))
        if t is None or t["status"] in ("PENDING", "REJECTED", "DELETED", "IN_APPEAL"):
            return (132001, "(#132001) Template name does not exist in the translation",
                    f"template name ({name}) does not exist in {language}", "404")
        if t["status"] == "PAUSED":
            return 132015, "(#132015) Template is paused", f"template {name} is paused due to low quality", "400"
        if t["status"] == "DISABLED":
            return 132016, "(#132016) Template is disabled", f"template {name} has been disabled", "400"
        return str(t["category"]).lower()

    def accepted(self, name: str, language: str) -> None:
        key = (name, language)
        self.sent_by_template[key] = self.sent_by_template.get(key, 0) + 1
        self.sent_after_change[key] = self.sent_after_change.get(key, 0) + 1
        if self.pause_after is not None and self.sent_by_template[key] == self.pause_after:
            # Paused at once (the next send is refused), its webhook posted beside.
            for change in self._changed(name, language, status="PAUSED"):
                self._spawn(self._post(change))

    # ------------------------------------------------------------------ changes and their webhooks

    async def change_template(self, name: str, language: str, *, status: str | None = None,
                              category: str | None = None, quality: str | None = None) -> dict[str, Any]:
        for change in self._changed(name, language, status=status, category=category, quality=quality):
            await self._post(change)
        return self.templates[(name, language)]

    def _changed(self, name: str, language: str, *, status: str | None = None, category: str | None = None,
                 quality: str | None = None) -> list[dict[str, Any]]:
        """Makes the change; the webhook changes Meta would post for it."""
        t = self.templates[(name, language)]
        changes: list[dict[str, Any]] = []
        base = {"message_template_id": int(t["id"]), "message_template_name": name,
                "message_template_language": language}
        if status and status != t["status"]:
            t["status"] = status
            self.sent_after_change[(name, language)] = 0
            changes.append({"field": "message_template_status_update", "value": {
                **base, "event": status, "reason": "NONE" if status == "APPROVED" else "LOW_QUALITY",
                "message_template_category": t["category"]}})
        if category and category != t["category"]:
            changes.append({"field": "template_category_update", "value": {
                **base, "previous_category": t["category"], "new_category": category}})
            t["category"] = category
        if quality and quality != t["quality"]:
            changes.append({"field": "message_template_quality_update", "value": {
                **base, "previous_quality_score": t["quality"], "new_quality_score": quality}})
            t["quality"] = quality
        return changes

    async def change_number(self, number_id: str, *, event: str, quality_rating: str | None = None,
                            limit_tier: str | None = None) -> dict[str, Any]:
        n = self.numbers[number_id]
        if quality_rating:
            n["quality_rating"] = quality_rating
        if event == "FLAGGED":
            n["status"] = "FLAGGED"
        value: dict[str, Any] = {"display_phone_number": n["display_phone_number"], "event": event}
        if limit_tier:
            n["messaging_limit_tier"] = limit_tier
            value["current_limit"] = limit_tier
        await self._post({"field": "phone_number_quality_update", "value": value})
        return n

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, change: dict[str, Any]) -> None:
        """Posts one change in Meta's envelope, signed, until the receiver acknowledges it (at most 30 s)."""
        if not self.webhook_url:
            return
        body = json.dumps({"object": "whatsapp_business_account", "entry": [
            {"id": self.waba_id, "time": int(time.time()), "changes": [change]}]}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(self.app_secret, body)}
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            while True:
                try:
                    if (await client.post(self.webhook_url, content=body, headers=headers)).status_code == 200:
                        self.webhooks_posted += 1
                        return
                except httpx.HTTPError as exc:
                    log.info("template webhook to %s failed: %r; will retry", self.webhook_url, exc)
                if time.monotonic() > deadline:
                    log.warning("template webhook to %s not acknowledged in 30 s; dropped", self.webhook_url)
                    return
                await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ Meta's management endpoints

    def listing(self, request: Request, items: list[dict[str, Any]]) -> JSONResponse:
        try:
            limit = max(1, min(100, int(request.query_params.get("limit", "25"))))
            start = int(base64.b64decode(request.query_params.get("after", "") or b"MA==").decode())
        except ValueError:
            return JSONResponse(_error(100, "(#100) Invalid parameter", "limit or after"), 400)
        page = items[start:start + limit]
        paging: dict[str, Any] = {"cursors": {"before": base64.b64encode(str(start).encode()).decode(),
                                              "after": base64.b64encode(str(start + len(page)).encode()).decode()}}
        if start + len(page) < len(items):
            paging["next"] = f"{request.url.remove_query_params('after')}&after={paging['cursors']['after']}"
        return JSONResponse({"data": page, "paging": paging})

    def _meta(self, t: dict[str, Any]) -> dict[str, Any]:
        return {"id": t["id"], "name": t["name"], "language": t["language"], "status": t["status"],
                "category": t["category"], "components": t["components"],
                "quality_score": {"score": t["quality"], "date": int(time.time())}}

    async def list_templates(self, request: Request) -> JSONResponse:
        if request.path_params["waba_id"] != self.waba_id:
            return JSONResponse(_error(100, "(#100) Unsupported get request", "unknown WABA"), 400)
        return self.listing(request, [self._meta(t) for t in self.templates.values() if t["status"] != "DELETED"])

    async def list_numbers(self, request: Request) -> JSONResponse:
        """Each number with the fields asked for (as Graph answers; id always): the limit under its current name
        `whatsapp_business_manager_messaging_limit` and its deprecated one `messaging_limit_tier` (§1.6), so a client
        reading the wrong one finds nothing."""
        if request.path_params["waba_id"] != self.waba_id:
            return JSONResponse(_error(100, "(#100) Unsupported get request", "unknown WABA"), 400)
        asked = {f.strip() for f in request.query_params.get("fields", "").split(",") if f.strip()}
        numbers = [{**n, "whatsapp_business_manager_messaging_limit": n["messaging_limit_tier"]}
                   for n in self.numbers.values()]
        return self.listing(request, [{k: v for k, v in n.items() if not asked or k in asked or k == "id"}
                                      for n in numbers])

    async def create_template(self, request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        key = (body.get("name"), body.get("language"))
        if key in self.templates and self.templates[key]["status"] != "DELETED":
            return JSONResponse(_error(100, "(#100) Invalid parameter", "Content in this language already exists",
                                       subcode=2388024), 400)
        t = {"name": key[0], "language": key[1], "status": "PENDING", "category": body.get("category"),
             "quality": "UNKNOWN", "components": body.get("components") or [], "id": str(next(self._ids))}
        self.templates[key] = t
        return JSONResponse({"id": t["id"], "status": "PENDING", "category": t["category"]})

    async def edit_template(self, request: Request) -> JSONResponse:
        found = [t for t in self.templates.values() if t["id"] == request.path_params["template_id"]]
        if not found:
            return JSONResponse(_error(100, "(#100) Invalid parameter", "unknown template id"), 400)
        body = json.loads(await request.body())
        t = found[0]
        t["components"] = body.get("components") or t["components"]
        await self.change_template(t["name"], t["language"], status="PENDING")  # an edit goes back to review
        return JSONResponse({"success": True})

    async def delete_template(self, request: Request) -> JSONResponse:
        name = request.query_params.get("name")
        hits = [t for t in self.templates.values() if t["name"] == name]
        for t in hits:
            t["status"] = "DELETED"
        return JSONResponse({"success": bool(hits)})

    # ------------------------------------------------------------------ test controls

    async def control_template(self, request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        key = (request.path_params["name"], body.get("language", "en_US"))
        if key not in self.templates:
            return JSONResponse({"error": "no such template"}, 404)
        t = await self.change_template(*key, status=body.get("status"), category=body.get("category"),
                                       quality=body.get("quality"))
        return JSONResponse({**t, "at": time.time()})

    async def control_number(self, request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        if request.path_params["number_id"] not in self.numbers:
            return JSONResponse({"error": "no such number"}, 404)
        n = await self.change_number(request.path_params["number_id"], event=body.get("event", "DOWNGRADE"),
                                     quality_rating=body.get("quality_rating"), limit_tier=body.get("limit_tier"))
        return JSONResponse(n)

    async def stats(self, _request: Request) -> JSONResponse:
        return JSONResponse({
            "templates": [{k: t[k] for k in ("name", "language", "status", "category", "quality")}
                          for t in self.templates.values()],
            "sent": {f"{n}:{lang}": c for (n, lang), c in self.sent_by_template.items()},
            "sent_after_change": {f"{n}:{lang}": c for (n, lang), c in self.sent_after_change.items()},
            "webhooks_posted": self.webhooks_posted})

    def routes(self, authorised: Any) -> list[Route]:
        return [
            Route("/{version}/{waba_id}/message_templates", authorised(self.list_templates), methods=["GET"]),
            Route("/{version}/{waba_id}/message_templates", authorised(self.create_template), methods=["POST"]),
            Route("/{version}/{waba_id}/message_templates", authorised(self.delete_template), methods=["DELETE"]),
            Route("/{version}/{waba_id}/phone_numbers", authorised(self.list_numbers), methods=["GET"]),
            Route("/_sandbox/templates/{name}", self.control_template, methods=["POST"]),
            Route("/_sandbox/numbers/{number_id}", self.control_number, methods=["POST"]),
            Route("/_sandbox/templates", self.stats, methods=["GET"]),
            Route("/{version}/{template_id}", authorised(self.edit_template), methods=["POST"]),
        ]


def _error(code: int, message: str, details: str, subcode: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code,
                             "error_data": {"messaging_product": "whatsapp", "details": details}}
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}
