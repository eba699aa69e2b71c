"""`campaign run` when the operator has something to fix (a wrong spec or audience, a missing credential, the budget,
the campaign already running, the store gone mid-run): one `error:` line, instead of Prefect's tracebacks.

Prefect logs a failed task run and a failed flow run with their traceback (`exc_info`), to the console and to the
API: dozens of frames, twice, burying the one line that matters, which the CLI prints last (`parser.main`). These
errors' own messages already name the file and field, the variable, the running holder or the store (password
hidden): they are the operator's to fix, not bugs, so their records keep their message and lose the traceback. Every
other exception keeps its traceback: those are bugs, and need it.
"""

from __future__ import annotations

import argparse
import functools
import logging
import shlex
from collections.abc import Iterator
from contextlib import contextmanager

# The loggers Prefect's engines log a run's failure on (prefect.logging.loggers.flow_run_logger/task_run_logger).
# A filter on a logger sees only the records logged on that very logger, so each one gets it.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


@functools.cache
def _operator_error_types() -> tuple[type[BaseException], ...]:
    # Imported when first needed: `campaign --help` and the commands that never fail this way stay quick.
    from pipeline.audience.header import AudienceError
    from pipeline.audience.policy import PolicyError
    from pipeline.channels.templates import SyncError
    from pipeline.dispatch.locks import CampaignLocked
    from pipeline.render.templates import TemplateProblem
    from pipeline.spec import SpecError  # OverBudget (pipeline/dispatch/budget.py) and TemplateRefused are SpecErrors
    from pipeline.store import StoreError

    return (SpecError, AudienceError, PolicyError, TemplateProblem, CampaignLocked, StoreError, SyncError)


def is_operator_error(exc: BaseException | None) -> bool:
    """An error whose message is all the operator needs: shown as one `error:` line, exit code 2."""
    if exc is None:
        return False
    # flows/approval.py's (a rejection stands, or one waits), by name: pipeline/ never imports flows/.
    return isinstance(exc, _operator_error_types()) or type(exc).__name__ == "CampaignNotApproved"


class OperatorErrorWithoutTraceback(logging.Filter):
    """Keeps every record; a record carrying an operator's error keeps its message and loses its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and is_operator_error(record.exc_info[1]):
            # exc_text too: the masking filter (flows/logging_mask.py) may have rendered the traceback already.
            record.exc_info, record.exc_text = None, None
        return True


@contextmanager
def operator_errors_without_traceback() -> Iterator[None]:
    """For the block (a flow run in this process): an operator's error's records on the run loggers without
    traceback. Removed afterwards, so a program calling the CLI in-process (the tests) keeps its logging as it was."""
    quiet = OperatorErrorWithoutTraceback()
    loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def stopped_by_store(error: Exception, args: argparse.Namespace, campaign_id: str) -> str:
    """The run's last line: the store and why (the StoreError's one line), and the command that finishes the
    campaign once the store is back. The spec path and campaign id only: the store's URL is in the error, password
    hidden, and a URL to copy would need the password."""
    resume = f"campaign resume {shlex.quote(str(args.spec))}"  # quoted: pasted into a shell as it is
    if getattr(args, "campaign_id", None):
        resume += f" --campaign-id {shlex.quote(campaign_id)}"
    if getattr(args, "db", None):
        resume += " --db <the same store>"
    return (f"error: {error} — campaign {campaign_id} stopped, its unsent messages stay queued; once the store is "
            f"back, `{resume}` finishes it")
