"""Model-written personalisation, the optional stage between render and estimate: each variable of the spec's
`generate:` is written per recipient by an OpenAI-compatible endpoint (pipeline/render/llm_client.py) from its
prompt (Jinja2 over the row's columns), checked (pipeline/render/generated_checks.py), and the messages are
rendered again with it; a refused or missing answer is replaced by the variable's fallback text and counted.

Answers are cached in the store's `generated_values` by the hash of model, prompt and token bound, written
batch by batch as they come: a re-run, or a resume after a crash, calls the endpoint only for what it never
answered. Preparation renders with each generated variable set to its fallback (`stand_in`), so the rows it
accepts, and the lengths it checks, hold for the fallback; the stage then renders them with the real values
(a row its value makes too long falls back too). Hands the queue step a Prepared whose `accepted` carries
`gen_<name>` columns and the final text and parameters, and a GenerationReport for the estimate.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import polars as pl
from jinja2 import StrictUndefined

from pipeline.render.environment import BoundedEnvironment
from pipeline.render.generated_checks import clean, refusal
from pipeline.render.limits import RenderLimits
from pipeline.render.llm_client import Answer, Endpoint, complete_all
from pipeline.render.prepare import Prepared
from pipeline.render.segments import with_segments
from pipeline.render.templates import render_messages
from pipeline.spec import CampaignSpec, GenerateSpec, SpecError, positive_setting
from pipeline.store import Store
from pipeline.store.bulk import insert_frame

BATCH_ENV = "CAMPAIGN_GENERATE_BATCH"
DEFAULT_BATCH = 2_000  # answers held before they are written to the cache (and prompts in flight at most)
MAX_PROMPT_CHARS = 8_000  # a rendered prompt longer than this is not sent: the row falls back
_ENV = BoundedEnvironment(undefined=StrictUndefined, autoescape=False)
RENDERED = ("text", "params_json", "segments", "encoding")


@dataclass
class GenerationReport:
    rows: int = 0
    calls: int = 0  # requests made, retries included
    cache_hits: int = 0
    generated: int = 0  # values used as the model wrote them
    fallbacks: Counter[str] = field(default_factory=Counter)  # reason -> rows that got the fallback text
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    samples: list[tuple[str, str]] = field(default_factory=list)  # (variable, value) for the approval view


def gen_column(name: str) -> str:
    return f"gen_{name}"


def stand_in(spec: CampaignSpec) -> CampaignSpec:
    """The spec preparation renders: every generated variable set to its fallback text inside the template."""
    if spec.generate is None:
        return spec
    sets = "".join(f"{{% set {name} = {v.fallback!r} %}}" for name, v in spec.generate.variables.items())

    def wrap(source: str) -> str:
        return sets + source

    template = spec.template
    return spec.model_copy(update={"template": template.model_copy(update={
        "text": wrap(template.text), "header": [wrap(s) for s in template.header],
        "body": [wrap(s) for s in template.body],
        "buttons": [b.model_copy(update={"text": wrap(b.text)}) if b.text else b for b in template.buttons],
    })})


def endpoint_for(generate: GenerateSpec, environ: dict[str, str] | None = None) -> Endpoint:
    """The spec's endpoint settings, the base URL and model overridden by CAMPAIGN_LLM_BASE_URL / _MODEL."""
    environ = dict(os.environ) if environ is None else environ
    key = environ.get(generate.api_key_env, "")
    if not key:
        raise SpecError(f"generate.api_key_env: environment variable {generate.api_key_env} is not set")
    return Endpoint(
        base_url=environ.get("CAMPAIGN_LLM_BASE_URL") or generate.base_url,
        model=environ.get("CAMPAIGN_LLM_MODEL") or generate.model, api_key=key,
        concurrency=generate.concurrency, max_per_second=generate.max_per_second, timeout_s=generate.timeout_s,
        max_attempts=generate.max_attempts, max_tokens=generate.max_tokens)


def input_hash(endpoint: Endpoint, prompt: str) -> str:
    return hashlib.sha256(f"{endpoint.model}\x00{endpoint.max_tokens}\x00{prompt}".encode()).hexdigest()


def _prompts(frame: pl.DataFrame, source: str) -> list[str | None]:
    template = _ENV.from_string(source)
    out: list[str | None] = []
    for row in frame.iter_rows(named=True):
        try:
            prompt = template.render({k: v for k, v in row.items() if isinstance(v, str)})
        except Exception:  # a row the prompt cannot render (a missing column value): it falls back
            prompt = None
        out.append(prompt if prompt is not None and len(prompt) <= MAX_PROMPT_CHARS else None)
    return out


def _cached(db: Store, hashes: list[str]) -> dict[str, tuple[str | None, int, int]]:
    found: dict[str, tuple[str | None, int, int]] = {}
    for start in range(0, len(hashes), 500):  # IN lists kept well below SQLite's bound on variables
        chunk = hashes[start:start + 500]
        for h, value, p, c in db.rows("SELECT input_hash, value, prompt_tokens, completion_tokens FROM "
                                      "generated_values WHERE input_hash IN :h", h=chunk):
            found[h] = (value, p or 0, c or 0)
    return found


def _call(db: Store, endpoint: Endpoint, prompts: dict[str, str], report: GenerationReport, batch: int) -> None:
    """Asks for every uncached prompt, `batch` at a time, each batch's answers cached before the next."""
    items = list(prompts.items())
    for start in range(0, len(items), batch):
        part = items[start:start + batch]
        answers: list[Answer] = asyncio.run(complete_all(endpoint, [p for _, p in part]))
        report.calls += sum(a.attempts for a in answers)
        rows = [(h, a) for (h, _), a in zip(part, answers, strict=True) if a.text is not None]
        report.prompt_tokens += sum(a.prompt_tokens for a in answers)
        report.completion_tokens += sum(a.completion_tokens for a in answers)
        if rows:  # only real answers are cached: a failed call is asked again on the next run
            frame = pl.DataFrame({
                "input_hash": [h for h, _ in rows], "value": [a.text for _, a in rows],
                "model": [endpoint.model] * len(rows), "prompt_tokens": [a.prompt_tokens for _, a in rows],
                "completion_tokens": [a.completion_tokens for _, a in rows],
                "created_at": [datetime.now(UTC)] * len(rows)})
            with db.write() as conn:
                insert_frame(conn, "generated_values", frame, on_conflict="ignore")


def generate_values(db: Store, spec: CampaignSpec, accepted: pl.DataFrame, *,
                    endpoint: Endpoint | None = None) -> tuple[pl.DataFrame, GenerationReport]:
    """`accepted` with a checked `gen_<name>` column per generated variable, and what it took."""
    assert spec.generate is not None
    endpoint = endpoint or endpoint_for(spec.generate)
    batch = positive_setting(BATCH_ENV, DEFAULT_BATCH)
    report = GenerationReport(rows=accepted.height)
    frame = accepted.drop(RENDERED, strict=False)
    columns = {}
    for name, variable in spec.generate.variables.items():
        prompts = _prompts(frame, variable.prompt)
        hashes = [input_hash(endpoint, p) if p is not None else None for p in prompts]
        wanted = list({h for h in hashes if h is not None})
        cache = _cached(db, wanted)
        report.cache_hits += sum(1 for h in hashes if h in cache)
        missing = {h: p for h, p in zip(hashes, prompts, strict=True) if h is not None and h not in cache}
        if missing:
            _call(db, endpoint, missing, report, batch)
            cache |= _cached(db, list(missing))
        values = []
        for h in hashes:
            answer = cache.get(h)[0] if h is not None and h in cache else None
            value = clean(answer) if answer is not None else None
            reason = refusal(value, channel=spec.channel, max_chars=variable.max_chars)
            if reason is None:
                report.generated += 1
                values.append(value)
                if len(report.samples) < 5:
                    report.samples.append((name, value))
            else:
                report.fallbacks[reason] += 1
                values.append(variable.fallback)
        columns[gen_column(name)] = pl.Series(values, dtype=pl.String)
    report.cost_usd = (report.prompt_tokens * spec.generate.input_usd_per_1m_tokens
                       + report.completion_tokens * spec.generate.output_usd_per_1m_tokens) / 1e6
    return accepted.with_columns(**columns), report


def personalise(db: Store, spec: CampaignSpec, prepared: Prepared, *,
                endpoint: Endpoint | None = None) -> tuple[Prepared, GenerationReport]:
    """The stage: values generated and checked, the messages rendered again with them."""
    assert spec.generate is not None
    frame, report = generate_values(db, spec, prepared.accepted, endpoint=endpoint)
    variables = {**spec.variables, **{n: gen_column(n) for n in spec.generate.variables}}
    limits = RenderLimits.for_channel(spec.channel)
    rendered, failed = render_messages(frame.drop(RENDERED, strict=False), spec.template, variables, limits)
    if failed.height:  # the generated value made the message too long: that row's value falls back
        report.fallbacks["message_too_long"] += failed.height
        retry = frame.filter(pl.col("row_number").is_in(failed["row_number"].implode())).with_columns(
            pl.lit(v.fallback).alias(gen_column(n)) for n, v in spec.generate.variables.items())
        again, _ = render_messages(retry.drop(RENDERED, strict=False), spec.template, variables, limits)
        report.generated -= failed.height
        rendered = pl.concat([rendered, again], how="vertical_relaxed").sort("row_number")
    accepted = with_segments(rendered)
    return replace(prepared, accepted=accepted, accepted_rows=accepted.height), report

