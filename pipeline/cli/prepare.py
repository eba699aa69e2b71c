"""`campaign prepare`: validate, dedupe, suppress and render an audience without sending, write
the accepted rows and the rejects, print a summary (and, with --json, the counts as JSON)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

from pipeline.cli.common import add_db_arg
from pipeline.records import ChannelName

CATEGORIES = ["marketing", "utility", "authentication", "service"]
DEFAULT_BATCH_MB = 16  # pipeline.audience.load.DEFAULT_BATCH_BYTES, without importing Polars to build the parser


def add_prepare_command(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the `prepare` subcommand to the `campaign` parser's subparsers."""
    p = subparsers.add_parser(
        "prepare",
        help="load, validate, dedupe and render an audience without sending",
        description="Prepares AUDIENCE.csv (or the audience and template of SPEC.yaml) and writes "
        "OUT/accepted.parquet, OUT/rejects.csv and OUT/rejects.parquet.",
    )
    p.add_argument("source", type=Path, help="AUDIENCE.csv, or a campaign SPEC.yaml")
    # A closed list (the registry's channels: tests/audience/test_numbers.py keeps the two equal): an unknown name
    # would find no blocked-country entries and block nothing. Not the registry itself: it imports every channel.
    p.add_argument("--channel", default="whatsapp", choices=sorted(get_args(ChannelName)),
                   help="channel whose blocked-country policy applies")
    p.add_argument("--category", default="marketing", choices=CATEGORIES)
    p.add_argument(
        "--template", type=Path,
        help="a .yaml file holding a template (name, language, category, text, header, body, buttons, and "
        "optionally `variables`), or any other file holding the message text as Jinja2 over the CSV columns",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("prepared"), help="output folder (default: prepared)")
    add_db_arg(p, help_text="the store to read suppressions and recent sends from (a URL or a SQLite path; "
               "default: none, unless $CAMPAIGN_DATABASE_URL is set)")
    p.add_argument("--frequency-window-hours", type=float, default=24.0, help="marketing frequency cap window")
    p.add_argument("--opt-in-max-age-days", type=int, default=730, help="older opt_in_at is stale (0: no limit)")
    p.add_argument("--default-country", help="ISO 3166 code for rows without a country (national numbers)")
    p.add_argument("--batch-mb", type=int, default=DEFAULT_BATCH_MB,
                   help=f"read the CSV in batches of about this size; memory follows it (default: {DEFAULT_BATCH_MB})")
    p.add_argument("--max-field-bytes", type=_positive, metavar="N",
                   help="a longer field rejects its row (default: $CAMPAIGN_MAX_FIELD_BYTES or 65536)")
    p.add_argument("--max-row-bytes", type=_positive, metavar="N",
                   help="a longer row is rejected (default: $CAMPAIGN_MAX_ROW_BYTES or 1048576)")
    p.add_argument("--max-message-chars", type=_positive, metavar="N",
                   help="a longer rendered text or parameter rejects its row (default: $CAMPAIGN_MAX_MESSAGE_CHARS "
                   "or the channel's own limit)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="last line: one JSON object with the counts")
    p.set_defaults(func=cmd_prepare)
    return p


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _template(path: Path, category: str) -> tuple[Any, dict[str, str]]:
    """(TemplateSpec, variables) from --template."""
    import yaml
    from jinja2 import TemplateSyntaxError, meta
    from pydantic import ValidationError

    from pipeline.render.templates import _ENV
    from pipeline.spec import SpecError, TemplateSpec

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the template: {exc.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a template file must be a YAML mapping")
        variables = data.pop("variables", None)
        data.setdefault("name", path.stem)
        data.setdefault("category", category)
        try:
            spec = TemplateSpec.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise SpecError(f"{path}: invalid template: {problems}") from None
        if variables is not None and not isinstance(variables, dict):
            raise SpecError(f"{path}: `variables` must map template variables to CSV columns")
        sources = [spec.text, *spec.header, *spec.body]
    else:
        body = text[:-1] if text.endswith("\n") else text  # the file's final newline is not message text
        name = re.sub(r"[^A-Za-z0-9_]+", "_", path.stem) or "template"
        spec = TemplateSpec(name=name, language="en", category=category, text=body)
        variables, sources = None, [body]
    if variables is None:  # variables are the CSV columns of the same names
        used: set[str] = set()
        for source in sources:
            try:
                used |= meta.find_undeclared_variables(_ENV.parse(source))
            except TemplateSyntaxError as exc:
                raise SpecError(f"{path}: template syntax error: {exc.message} (line {exc.lineno})") from None
        variables = {name: name for name in sorted(used)}
    return spec, {str(k): str(v) for k, v in variables.items()}


def _make_out_dir(out: Path) -> None:
    """Creates the output folder up front, so a bad --out (a file, an unwritable place) is one error line
    before any work, not a traceback from the first batch's writer."""
    from pipeline.spec import SpecError

    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SpecError(f"{out}: not a folder: --out names the output folder") from None
    except OSError as exc:
        raise SpecError(f"{out}: cannot create the output folder (--out): {exc.strerror}") from None


@contextmanager
def _from_db(db: str | None, channel: str, window: timedelta, cap: Any = None,
             app: str | None = None) -> Iterator[tuple[set[str], Any]]:
    """Suppressions and recently messaged recipients from the store, when one is named (or configured); with a spec,
    its frequency cap (or the team's) decides who is capped, else one message per `window` on `channel`. The capped
    are read while the preparation checks its first batches' numbers (frequency.capped_meanwhile)."""
    import os

    from pipeline import store
    from pipeline.audience.frequency import capped_meanwhile, window_cap

    if db is None and not os.environ.get(store.URL_ENV):
        yield set(), set()
        return
    url = store.database_url(db)
    path = store.sqlite_path(url)
    if path is not None and not path.exists():
        from pipeline.spec import SpecError

        raise SpecError(f"{path}: no such store")
    with capped_meanwhile(url, cap if cap is not None else window_cap(channel, window), app=app or channel) as capped:
        with store.connect(url) as shared:
            suppressed = store.suppressed_addresses(shared, channel)
        yield suppressed, capped


def cmd_prepare(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from pipeline.audience.blocks import ReadLimits
    from pipeline.audience.frequency import app_of, describe, frequency_cap_for
    from pipeline.audience.load import AudienceError
    from pipeline.audience.policy import PolicyError, blocked_policy
    from pipeline.render.limits import RenderLimits
    from pipeline.render.prepare import prepare_audience
    from pipeline.render.signed_sms import SignedSms
    from pipeline.render.templates import TemplateProblem
    from pipeline.spec import SpecError, load_spec

    try:
        _make_out_dir(args.out)
        source: Path = args.source
        channel, category, template, variables, blocked = args.channel, args.category, None, None, None
        spec = None
        cap, cap_settings, app = None, {}, None
        if source.suffix in (".yaml", ".yml"):
            spec = load_spec(source)
            cap, app = frequency_cap_for(spec), app_of(spec)
            cap_settings = {"frequency_detail": describe(cap), "capped_categories": frozenset(cap.categories)}
            source, channel, category = spec.audience, spec.channel, spec.template.category
            template, variables, blocked = spec.template, spec.variables, spec.blocked_countries
        if args.template is not None:
            template, variables = _template(args.template, category)
            category = template.category
        window = timedelta(hours=args.frequency_window_hours)
        read_limits = ReadLimits.from_env(max_field_bytes=args.max_field_bytes, max_row_bytes=args.max_row_bytes)
        render_limits = RenderLimits.for_channel(channel, max_message_chars=args.max_message_chars)
        if spec is not None:  # the spec's provider may bound more (Alibaba SMS: 500 with the signature)
            render_limits = replace(render_limits, signed_sms=SignedSms.of_spec(spec))
        with _from_db(args.db, channel, window, cap, app) as (suppressed, recent):
            prepared = prepare_audience(
                source, channel=channel, category=category, template=template, variables=variables,
                policy=blocked_policy(channel, blocked), suppressed=suppressed, recently_messaged=recent,
                frequency_window=window, opt_in_max_age=timedelta(days=args.opt_in_max_age_days) or None,
                out_dir=args.out, default_country=args.default_country, batch_bytes=max(1, args.batch_mb) << 20,
                keep_frames=False, read_limits=read_limits, render_limits=render_limits, **cap_settings,
            )  # fmt: skip
    except (AudienceError, TemplateProblem, SpecError, PolicyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rejected = prepared.rows_read - prepared.accepted_rows
    print(f"{source}: {prepared.rows_read:,} rows read, {prepared.accepted_rows:,} accepted, {rejected:,} rejected")
    for reason, n in sorted(prepared.counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {reason:<18}{n:>12,}")
    print(f"wrote {', '.join(str(p) for p in prepared.paths.values())}")
    if args.json:
        print(json.dumps({"rows": prepared.rows_read, "accepted": prepared.accepted_rows, "rejected": rejected,
                          "by_reason": prepared.counts, "out": str(args.out)}))  # fmt: skip
    return 0
