"""No phone number or e-mail address reaches a log line: a filter on the handlers of Prefect's run loggers and
of our own `pipeline` loggers masks each record (message, arguments and traceback) before it is written or
shipped to the Prefect API.

`pipeline.*` records reach a run's logs in the UI when PREFECT_LOGGING_EXTRA_LOGGERS=pipeline is set before
Prefect starts (the CLI, flows/serve.py and prefect.yaml's job variables set it).
"""

from __future__ import annotations

import logging
import re

from pipeline.masking import mask_text

# Loggers whose records reach the console or the Prefect API: the run loggers, Prefect's own, ours.
LOGGERS = ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.extra", "pipeline")


# Tokens that look like digits to pipeline.masking but are no one's personal data: run ids, loopback addresses
# and ports (the "View at http://127.0.0.1:4200/runs/..." line), dates, times and amounts. They stay readable.
_NOT_PII = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b"  # IPv4[:port]
    r"|\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"  # ISO date[time]
    r"|\b\d{2}:\d{2}:\d{2}(?:\.\d+)?\b"  # a time of day
    r"|\b20\d{2}[01]\d[0-3]\d-[0-2]\d[0-5]\d[0-5]\d\b"  # YYYYMMDD-HHMMSS, as in an upload's campaign id
    r"|(?<![\d+.])\d{1,9}\.\d{1,6}\b(?!\.\d)"  # an amount (USD 1234.5678), not a dotted phone number
)


def mask_log_text(text: str) -> str:
    """pipeline.masking.mask_text on everything except run ids, IP addresses, dates, times and amounts."""
    parts, last = [], 0
    for match in _NOT_PII.finditer(text):
        parts += [mask_text(text[last:match.start()]), match.group(0)]
        last = match.end()
    parts.append(mask_text(text[last:]))
    return "".join(parts)


class MaskingFilter(logging.Filter):
    """Rewrites a record's text with every phone number and e-mail address masked; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_pii_masked", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep it as written, masked
            message = f"{record.msg} {record.args}"
        record.msg, record.args = mask_log_text(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_log_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_log_text(record.stack_info)
        record._pii_masked = True
        return True


_FILTER = MaskingFilter()


def install_log_masking() -> None:
    """Puts the masking filter on those loggers and on every handler they use. Idempotent; call it again after
    Prefect (re)configures logging, e.g. at the start of each flow run."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        # Prefect's handlers (console, API) and the logger itself; a host application's own root handlers
        # (a test runner's capture, say) are left as they are.
        targets: list[logging.Filterer] = [logger, *(
            h for h in logger.handlers if name or type(h).__module__.startswith("prefect."))]
        for target in targets:
            if not any(isinstance(f, MaskingFilter) for f in target.filters):
                target.addFilter(_FILTER)
