"""The upload page's HTML: server-rendered, no script, no external asset (it works offline), every value
HTML-escaped. Element ids are what tests/upload/test_upload_browser.py drives."""

from __future__ import annotations

from html import escape
from typing import Any

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#1d2330}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #ccd;padding:.2rem .5rem;text-align:left}
th{background:#eef}td.n{text-align:right}
.error{background:#fde8e8;border:1px solid #d33;padding:.6rem 1rem}.note{color:#555}
.ok{background:#e8f6ea;border:1px solid #3a3;padding:.6rem 1rem}
form.upload label{display:block;margin:.5rem 0}button{font-size:1rem;padding:.3rem 1rem}
"""


def page(title: str, body: str, *, refresh_s: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}<title>{escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>')


def error_box(message: str) -> str:
    return f'<p class="error" id="error">{escape(message)}</p>'


MAX_NAME = 100  # characters of the uploader's name (the spec's `uploaded_by`)


def upload_form(specs: list[str], max_mb: float, *, error: str | None = None, chosen: str | None = None) -> str:
    options = "".join(
        f'<option value="{escape(s)}"{" selected" if s == chosen else ""}>{escape(s)}</option>' for s in specs)
    # The token field comes before the file: the server checks it before writing a byte of the file.
    form = f"""{error_box(error) if error else ""}
<form class="upload" id="upload-form" method="post" action="/upload" enctype="multipart/form-data">
<label>Upload token <input type="password" id="token" name="token" autocomplete="off" required></label>
<label>Your name <input type="text" id="uploaded-by" name="uploaded_by" maxlength="{MAX_NAME}" required></label>
<label>Campaign spec <select id="spec" name="spec" required>{options}</select></label>
<label>Audience CSV (at most {max_mb:g} MB) <input type="file" id="file" name="file" accept=".csv,text/csv"
 required></label>
<button type="submit" id="check">Check the audience</button>
</form>
<p class="note">Nothing is sent until you start the campaign: the file is checked first (numbers, opt-in,
blocked countries, template variables) and priced.</p>"""
    if not specs:
        form = error_box("no campaign spec (*.yaml) in the specs folder") + form
    return page("Upload an audience", form)


def _table(table_id: str, header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{escape("" if v is None else str(v))}</td>'
                         for i, v in enumerate(row)) + "</tr>"
        for row in rows)
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def summary_section(summary: dict[str, Any]) -> str:
    counts = summary["rejects_by_reason"]
    first = summary["first_rejects"]
    parts = [
        f'<div id="summary"><p><b>{escape(summary["file"])}</b> with spec <b>{escape(summary["spec"])}</b> '
        f'({escape(summary["channel"])}, template {escape(summary["template"])}, {escape(summary["category"])})</p>',
        _table("totals", ["rows read", "accepted", "rejected"],
               [[summary["rows_read"], summary["accepted"], summary["rejected"]]], {0, 1, 2}),
        "<h2>Rejected rows by reason</h2>",
        _table("reject-counts", ["reason", "rows"], [[r, n] for r, n in counts.items()], {1})
        if counts else '<p id="reject-counts">No row was rejected.</p>',
    ]
    if first["rows"]:
        parts += [f'<h2>First {len(first["rows"])} rejected rows</h2>',
                  '<p class="note">Numbers and addresses masked. <a href="rejects.csv" id="rejects-csv">'
                  'Download every rejected row (rejects.csv)</a>.</p>',
                  _table("first-rejects", first["columns"], first["rows"], {0})]
    parts.append(estimate_section(summary["estimate"]))
    parts.append("</div>")
    return "".join(parts)


def estimate_section(estimate: dict[str, Any] | None) -> str:
    if estimate is None:
        return '<h2>Cost estimate</h2><p id="estimate">No message to price.</p>'
    rows = [["messages", estimate["messages"]], ["platform fees (USD)", estimate["platform_fee_usd"]],
            ["service fees (USD)", estimate["service_fee_usd"]], ["total (USD)", estimate["total_usd"]]]
    if estimate["budget_usd"] is not None:
        rows.append(["budget (USD)", estimate["budget_usd"]])
    if estimate["unpriced"]:
        rows.append(["messages without a price", estimate["unpriced"]])
    return (f'<h2>Cost estimate</h2><div id="estimate">{_table("estimate-totals", ["", "value"], rows, {1})}'
            f'<p class="note">Priced on {escape(estimate["priced_on"])} as if every message were delivered; '
            "suppressions and the frequency cap apply again when the campaign runs, so it may send fewer.</p>"
            + _table("estimate-by-country", ["country", "category", "messages", "total (USD)"],
                     estimate["by_country"], {2, 3}) + "</div>")


def start_form(upload_id: str, blocked: str | None) -> str:
    if blocked:
        return f'<p class="error" id="cannot-start">Cannot start: {escape(blocked)}.</p>'
    return (f'<form id="start-form" method="post" action="/upload/{escape(upload_id)}/start">'
            '<button type="submit" id="start">Start campaign</button></form>')


def run_link(label: str, run_id: str | None, url: str | None, state: str | None, element_id: str) -> str:
    if not run_id:
        return ""
    shown = f'<a href="{escape(url)}">{escape(run_id)}</a>' if url else escape(run_id)
    return f'<li>{escape(label)}: <span id="{element_id}">{shown}</span>' + (
        f' — <span id="{element_id}-state">{escape(state)}</span>' if state else "") + "</li>"


def status_section(status: dict[str, Any]) -> str:
    """Where the run is: handed over, taken by the watcher (its campaign id), and the campaign's flow run."""
    items = [f'<li>Handed to the drop folder as <code>{escape(status["inbox_file"])}</code> at '
             f'{escape(status["started_at"])}</li>']
    items.append(run_link("Watcher run", status.get("watcher_run_id"), status.get("watcher_run_url"),
                          status.get("watcher_state"), "watcher-run"))
    if status.get("start_error"):
        items.append(f"<li>The watcher could not be started now ({escape(status['start_error'])}); its schedule "
                     "picks the file up within a minute.</li>")
    outcome = status.get("outcome")
    if outcome is None:
        items.append(f'<li id="waiting">{escape(status.get("waiting") or "Waiting for the inbox watcher")}</li>')
    else:
        items.append(f'<li>Campaign <code id="campaign-id">{escape(outcome["campaign_id"])}</code>: '
                     f'<span id="outcome">{escape(outcome["outcome"])}</span>'
                     + (f" — {escape(outcome['reason'])}" if outcome.get("reason") else "") + "</li>")
        items.append(run_link("Campaign run", outcome.get("flow_run_id"), status.get("campaign_run_url"),
                              status.get("campaign_state"), "campaign-run"))
    return f'<h2>Campaign</h2><ul id="status">{"".join(items)}</ul>'


def test_send_section(upload_id: str, results: dict[str, Any] | None, error: str | None = None) -> str:
    """The test-send form (seeds one per line, rows, a variant) and the last test's results, seeds masked."""
    parts = ['<h2>Test send</h2><p class="note">Sends the first rows (or the rows you list) as the campaign will, '
             "to internal numbers or addresses only; kept apart from the campaign's counts, report and caps.</p>"]
    if error:
        parts.append(f'<p class="error" id="test-send-error">{escape(error)}</p>')
    parts.append(
        f'<form id="test-send-form" method="post" action="/upload/{escape(upload_id)}/test-send">'
        '<label>Seeds, one per line <textarea name="seeds" id="seeds" rows="3"></textarea></label>'
        '<label>Rows (a count, or row numbers 2,5,9; default 3) <input name="rows" id="test-rows"></label>'
        '<label>Variant (a spec with an experiment: blank tests each variant) <input name="variant" '
        'id="test-variant"></label>'
        '<button type="submit" id="test-send">Send test</button></form>')
    if results:
        variants = any(r.get("variant") for r in results["results"])
        rows = [[r["row"], *([r.get("variant") or ""] if variants else []), r["seed"], r["status"],
                 r["provider_message_id"] or r["error"] or "", r["cost_usd"]] for r in results["results"]]
        headers = ["row", *(["variant"] if variants else []), "seed", "status", "provider message id", "cost (USD)"]
        parts.append(_table("test-results", headers, rows, {0, len(headers) - 1}))
        parts.append(f'<p id="test-cost">Test cost USD {escape(results["cost_usd"])} (apart from the campaign), '
                     f'{escape(results["at"])}</p>')
    return "".join(parts)
