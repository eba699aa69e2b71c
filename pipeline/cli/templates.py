"""`campaign templates sync SPEC | list | show NAME`: the registry of pipeline/channels/templates.py."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline import store
from pipeline.channels import templates as registry
from pipeline.cli.common import add_db_arg
from pipeline.spec import load_spec


def cmd_sync(args: argparse.Namespace) -> int:
    from pipeline.channels.template_sync import sync

    spec = load_spec(args.spec)
    with store.connect(args.db) as db:
        counts = sync(db, spec, base_url=args.provider_base_url)
    print(f"{counts['templates']} templates ({counts['changed']} changed, {counts['deleted']} no longer listed), "
          f"{counts['numbers']} numbers")
    return continue_reapproved(args.db)  # campaigns its templates stopped, approved again, continue


def continue_reapproved(database: str | None) -> int:
    """Campaigns a template stopped whose template the registry now has APPROVED again: their continuation runs
    scheduled (flows/reapproval.py; Prefect is imported only when there is one)."""
    from pipeline import store
    from pipeline.dispatch.template_resume import due_waits

    with store.connect(database) as db:
        if not due_waits(db, limit=1):
            return 0
    from flows.reapproval import continue_reapproved as schedule  # Prefect's run_deployment: flows/, never pipeline/

    for started in schedule(database):
        print(f"campaign {started['campaign_id']}: its template is APPROVED again; it continues in flow run "
              f"{started['flow_run_name']} ({started['flow_run_id']})")
    return 0


def _row(db: store.Store, t: registry.ProviderTemplate) -> dict[str, Any]:
    return {"provider": t.provider, "account": t.account, "name": t.name, "language": t.language,
            "status": t.status, "category": t.category, "quality": t.quality,
            "last_change": t.changed_at.isoformat(timespec="seconds") if t.changed_at else None,
            "edits_left": registry.edits_left(db, t)}


def cmd_list(args: argparse.Namespace) -> int:
    with store.connect(args.db) as db:
        rows = [_row(db, t) for t in registry.templates(db, args.provider)]
        numbers = registry.numbers(db, args.provider)
    if args.json:
        print(json.dumps({"templates": rows, "numbers": [n.__dict__ for n in numbers]}, default=str))
        return 0
    print(f"{'name':<32}{'language':<10}{'status':<12}{'category':<16}{'quality':<9}{'edits left':<11}last change")
    for r in rows:
        print(f"{r['name']:<32}{r['language']:<10}{r['status']:<12}{r['category'] or '-':<16}"
              f"{r['quality'] or '-':<9}{r['edits_left']:<11}{r['last_change'] or '-'}")
    for n in numbers:
        limit = n.messaging_limit
        print(f"number {n.phone_number_id} ({n.display_phone_number}, {n.verified_name}): {n.status}, "
              f"quality {n.quality_rating}, {n.messaging_limit_tier} "
              f"({'unlimited' if limit is None else f'{limit:,}'} per 24 h)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with store.connect(args.db) as db:
        found = registry.templates(db, args.provider, args.name)
        if not found:
            print(f"error: no template {args.name!r} in the registry (run `campaign templates sync SPEC`)")
            return 2
        for t in found:
            row = _row(db, t)
            print(f"{t.name} [{t.language}] at {t.provider} {t.account}: {t.status}, category {t.category}"
                  f"{f' (was {t.previous_category})' if t.previous_category else ''}, quality {t.quality or '-'}")
            print(f"  last change {row['last_change'] or '-'}; edits left in the window: {row['edits_left']}")
            if t.deleted_at:
                print(f"  deleted {t.deleted_at.isoformat(timespec='minutes')}: the name is locked until "
                      f"{(t.deleted_at + registry.DELETED_NAME_LOCK).isoformat(timespec='minutes')}")
            for c in t.components:
                print(f"  {json.dumps(c, ensure_ascii=False)}")
        for h in registry.history(db, args.provider or found[0].provider, args.name):
            print(f"  {store.utc(h.at).isoformat(timespec='seconds')} [{h.language}] {h.kind}: "
                  f"{h.old_value or '-'} -> {h.new_value or '-'} ({h.source})")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import yaml

    from pipeline.channels.template_sync import submit

    spec = load_spec(args.spec)
    template = yaml.safe_load(open(args.file, encoding="utf-8"))
    if not isinstance(template, dict):
        print(f"error: {args.file}: a template is a mapping of name, language, category and components")
        return 2
    with store.connect(args.db) as db:
        kind, answer = submit(db, spec, template, base_url=args.provider_base_url)
    print(f"{kind}: {template['name']} [{template['language']}] submitted; the provider answered "
          f"{json.dumps(answer)} (review follows: `campaign templates sync` or its webhook tells the outcome)")
    return 0


def add_template_commands(sub: Any) -> None:
    group = sub.add_parser("templates", help="templates and numbers as the provider knows them")
    tsub = group.add_subparsers(dest="templates_command", required=True, metavar="ACTION")
    p = tsub.add_parser("sync", help="read the spec's provider account: templates and numbers")
    p.add_argument("spec")
    p.add_argument("--provider-base-url", help="the provider's base URL instead of the spec's (e.g. a sandbox)")
    add_db_arg(p)
    p.set_defaults(func=cmd_sync)
    p = tsub.add_parser("submit", help="create or edit a template (lint and the edit limits first)")
    p.add_argument("file", help="YAML: name, language, category, components (Meta's shape)")
    p.add_argument("--spec", required=True, help="a campaign spec naming the provider account and credentials")
    p.add_argument("--provider-base-url", help="the provider's base URL instead of the spec's (e.g. a sandbox)")
    add_db_arg(p)
    p.set_defaults(func=cmd_submit)
    p = tsub.add_parser("list", help="every template and number in the registry")
    p.add_argument("--provider", choices=["whatsapp", "chatapp"])
    p.add_argument("--json", action="store_true")
    add_db_arg(p)
    p.set_defaults(func=cmd_list)
    p = tsub.add_parser("show", help="one template: status, category, components, history")
    p.add_argument("name")
    p.add_argument("--provider", choices=["whatsapp", "chatapp"])
    add_db_arg(p)
    p.set_defaults(func=cmd_show)
