"""Model-written personalisation, the optional stage between render and estimate: each variable of the spec's
`generate:` is written per recipient by an OpenAI-compatible endpoint (pipeline/render/llm_client.py) from its
prompt (Jinja2 over the row's columns), checked (pipeline/render/generated_checks.py), and the messages are
rendered again with it; a refused or missing answer is replaced by the variable's fallback text and counted.

Answers are cached in the store's `generated_values` by the hash of model, prompt and token bound, written
batch by batch as they come, each with its check outcome (pipeline/render/generated_cache.py): a re-run, or a
resume after a crash, calls the endpoint only for what it never answered, and checks again only values whose
outcome was stored under other checks or settings. Prompts are rendered by the compiled path of the messages
(pipeline/render/fast.py) where they can be.

Preparation renders with each generated variable set to its fallback (`stand_in`), so the rows it accepts, and
the lengths it checks, hold for the fallback; the stage then renders them with the real values
(a row its value makes too long falls back too). Hands the queue step a Prepared whose `accepted` carries
`gen_<name>` columns and the final text and parameters, and a GenerationReport for the estimate.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import polars as pl
from jinja2 import StrictUndefined

from pipeline.render.environment import BoundedEnvironment
from pipeline.render.fast import PY_WHITESPACE, NotCompilable, compile_source
from pipeline.render.generated_cache import lookup, save_answers, save_outcomes
from pipeline.render.generated_checks import check_key, clean, refusal
from pipeline.render.limits import RenderLimits
from pipeline.render.llm_client import Answer, Endpoint, complete_all
from pipeline.render.prepare import Prepared
from pipeline.render.segments import with_segments
from pipeline.render.templates import render_messages
from pipeline.spec import CampaignSpec, GenerateSpec, SpecError, positive_setting
from pipeline.store import Store

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


def _hashes(endpoint: Endpoint, prompts: pl.Series) -> list[str]:
    """input_hash of each prompt (the same digests, without formatting the prefix again for each one)."""
    prefix, sha256 = f"{endpoint.model}\x00{endpoint.max_tokens}\x00".encode(), hashlib.sha256
    return [sha256(prefix + p.encode()).hexdigest() for p in prompts]


def _prompts(frame: pl.DataFrame, source: str) -> pl.Series:
    """Each row's prompt, over the row's text columns; null where it cannot render (a missing value) or is over
    MAX_PROMPT_CHARS: that row falls back. Compiled to one Polars expression where the prompt allows
    (pipeline/render/fast.py, the bytes Jinja2 renders); Jinja2 renders the rest, row by row."""
    columns = [c for c, kind in frame.schema.items() if kind == pl.String or isinstance(kind, pl.Categorical | pl.Enum)]
    cells = frame.select(pl.col(c).cast(pl.String) for c in columns)
    try:
        compiled = compile_source(_ENV, source, {c: c for c in columns})
    except NotCompilable:
        prompts = _rendered(cells, source)
    else:
        # with_columns, not select: a prompt without variables is a literal, which must still give one per row.
        done = cells.with_columns(_p=compiled.expr, _u=compiled.unsure.fill_null(False)).select("_p", "_u")
        prompts, unsure = done["_p"].alias("prompt"), done["_u"]
        if unsure.any():  # rows whose case mapping Polars and Python disagree on: Jinja2 renders them
            prompts = prompts.scatter(unsure.arg_true(), _rendered(cells.filter(unsure), source))
    return pl.select(pl.when(prompts.str.len_chars() <= MAX_PROMPT_CHARS).then(prompts)).to_series().alias("prompt")


def _rendered(cells: pl.DataFrame, source: str) -> pl.Series:
    template = _ENV.from_string(source)
    out: list[str | None] = []
    for row in cells.iter_rows(named=True):
        try:
            out.append(template.render({k: v for k, v in row.items() if v is not None}))
        except Exception:  # a row the prompt cannot render (a missing column value): it falls back
            out.append(None)
    return pl.Series("prompt", out, dtype=pl.String)


def _call(db: Store, endpoint: Endpoint, missing: pl.DataFrame, report: GenerationReport, batch: int,
          checked: Callable[[str], str | None], key: str) -> None:
    """Asks for every uncached prompt (`missing`: prompt, input_hash), `batch` at a time, each batch's answers
    cached, with their check outcome, before the next."""
    for part in missing.iter_slices(batch):
        answers: list[Answer] = asyncio.run(complete_all(endpoint, part["prompt"].to_list()))
        report.calls += sum(a.attempts for a in answers)
        report.prompt_tokens += sum(a.prompt_tokens for a in answers)
        report.completion_tokens += sum(a.completion_tokens for a in answers)
        # Only real answers are cached: a failed call is asked again on the next run.
        rows = [(h, a.text, a.prompt_tokens, a.completion_tokens, key, checked(a.text))
                for h, a in zip(part["input_hash"], answers, strict=True) if a.text is not None]
        save_answers(db, pl.DataFrame(rows, orient="row", schema={
            "input_hash": pl.String, "value": pl.String, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64,
            "check_key": pl.String, "refusal": pl.String}), endpoint.model)


def _cleaned(value: pl.Expr) -> pl.Expr:
    """generated_checks.clean, as an expression (Python's str.strip() strips PY_WHITESPACE)."""
    return value.str.strip_chars(PY_WHITESPACE).str.strip_chars('"').str.strip_chars(PY_WHITESPACE)


def _checked(db: Store, found: pl.DataFrame, key: str, checked: Callable[[str], str | None]) -> pl.DataFrame:
    """`found` with every outcome under `key`: one stored under another key (other settings, older checks) is
    worked out again and stored in its place."""
    stale = found.filter(~pl.col("fresh").fill_null(False))
    if not stale.height:
        return found
    again = stale.select("input_hash", check_key=pl.lit(key), refusal=pl.Series(
        [checked(v) if v is not None else "no_answer" for v in stale["value"]], dtype=pl.String))
    save_outcomes(db, again)
    return found.update(again.drop("check_key"), on="input_hash", include_nulls=True)


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
        key = check_key(spec.channel, variable.max_chars)

        def checked(answer: str, max_chars: int | None = variable.max_chars) -> str | None:
            return refusal(clean(answer), channel=spec.channel, max_chars=max_chars)

        prompts = _prompts(frame, variable.prompt)
        unique = prompts.drop_nulls().unique(maintain_order=True)
        keys = pl.DataFrame({"prompt": unique, "input_hash": _hashes(endpoint, unique)},
                            schema={"prompt": pl.String, "input_hash": pl.String})
        hashes = prompts.replace_strict(keys["prompt"], keys["input_hash"], default=None, return_dtype=pl.String)
        found = lookup(db, keys["input_hash"], key)
        report.cache_hits += int(hashes.is_in(found["input_hash"].implode()).sum())
        missing = keys.join(found, on="input_hash", how="anti")
        if missing.height:
            _call(db, endpoint, missing, report, batch, checked, key)
            found = pl.concat([found, lookup(db, missing["input_hash"], key)])
        found = _checked(db, found, key, checked)
        rows = pl.DataFrame({"input_hash": hashes}).join(
            found.with_columns(_hit=pl.lit(True)), on="input_hash", how="left", maintain_order="left")
        outcome = rows.select(
            reason=pl.when(pl.col("_hit")).then("refusal").otherwise(pl.lit("no_answer")),
            value=_cleaned(pl.col("value")))
        passed = outcome["reason"].is_null()
        report.generated += int(passed.sum())
        report.fallbacks.update(dict(outcome["reason"].drop_nulls().value_counts().iter_rows()))
        report.samples += [(name, v) for v in outcome["value"].filter(passed).head(5 - len(report.samples))]
        columns[gen_column(name)] = outcome.select(
            pl.when(passed).then("value").otherwise(pl.lit(variable.fallback))).to_series()
    report.cost_usd = (report.prompt_tokens * spec.generate.input_usd_per_1m_tokens
                       + report.completion_tokens * spec.generate.output_usd_per_1m_tokens) / 1e6
    return accepted.with_columns(**columns), report


def personalise(db: Store, spec: CampaignSpec, prepared: Prepared, *,
                endpoint: Endpoint | None = None) -> tuple[Prepared, GenerationReport]:
    """The stage: values generated and checked, the messages rendered again with them."""
    assert spec.generate is not None
    frame, report = generate_values(db, spec, prepared.accepted, endpoint=endpoint)
    variables = {**spec.variables, **{n: gen_column(n) for n in spec.generate.variables}}
    limits = RenderLimits.for_spec(spec)
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

