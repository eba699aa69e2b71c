"""`campaign run` when the store goes away mid-run: one line naming the store and the cause, then how to finish
the campaign, instead of Prefect's tracebacks.

Prefect logs a failed task run and a failed flow run with their traceback (`exc_info`), to the console and to the
API. For a StoreError that is dozens of SQLAlchemy and psycopg frames, twice, burying the one line that matters: the
StoreError's own message already names the store (password hidden) and why. A StoreError is the operator's to fix
(start the store again, resume), not a bug, so its records keep their message and lose the traceback. Every other
exception keeps its traceback: those are bugs, and need it.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.store import StoreError

# The loggers Prefect's engines log a run's failure on (prefect.logging.loggers.flow_run_logger/task_run_logger).
# A filter on a logger sees only the records logged on that very logger, so each one gets it.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class StoreErrorWithoutTraceback(logging.Filter):
    """Keeps every record; a record carrying a StoreError keeps its message and loses its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], StoreError):
            # exc_text too: the masking filter (flows/logging_mask.py) may have rendered the traceback already.
            record.exc_info, record.exc_text = None, None
        return True


@contextmanager
def store_errors_without_traceback() -> Iterator[None]:
    """For the block (a flow run in this process): a StoreError's records on the run loggers without traceback.
    Removed afterwards, so a program that calls the CLI in-process (the tests) keeps its logging as it was."""
    quiet = StoreErrorWithoutTraceback()
    loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def stopped_by_store(error: StoreError, args: argparse.Namespace, campaign_id: str) -> str:
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
