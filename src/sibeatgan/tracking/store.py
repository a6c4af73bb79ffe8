"""When MLflow fails: a dead or damaged tracking store, a full disk under its database or its
artifacts. Each becomes one line naming the store's URI (StoreError) or the place that could
not be written (OutputError), and MLflow's own tracebacks of it stay off the screen."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import mlflow
import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from sibeatgan.io import NO_SPACE, OutputError, StoreError, first_line, output_error
from sibeatgan.tracking.server import redacted

# what a failing store raises, through MLflow or past it (opening a damaged SQLite file)
STORE_ERRORS = (
    MlflowException,
    sqlalchemy.exc.SQLAlchemyError,
    requests.exceptions.RequestException,
    sqlite3.Error,
)

# what a store's error says -> what it means, and the fix
KNOWN_FAILURES = (
    ("database or disk is full", "its disk is full", "free space there"),
    ("file is not a database", "it is not an SQLite database (damaged?)", "restore it"),
    ("database disk image is malformed", "its database is damaged", "restore it"),
    ("readonly database", "it is read-only", "make it writable"),
    ("unable to open database file", "it cannot be opened", "check its path and folder"),
    ("max retries exceeded", "its server does not answer", "start the server"),
    ("connection refused", "its server does not answer", "start the server"),
)

# MLflow loggers that print a store's failure with its traceback, the failure we report
QUIET_LOGGERS = ("mlflow.store.db.utils", "mlflow.utils.async_logging.async_logging_queue")
_SQL_ERROR_LOG = "SQLAlchemy database error"


def store_failure(err: BaseException, uri: str | None = None) -> StoreError:
    """A store's error as one line naming the store (its password hidden) and the fix."""
    uri = redacted(uri or mlflow.get_tracking_uri())
    text = " ".join(str(e) for e in _chain(err)).lower()  # the cause may be a step back
    for needle, what, fix in KNOWN_FAILURES:
        if needle in text:
            return StoreError(
                f"MLflow tracking store {uri}: {what}; {fix} (or point MLFLOW_TRACKING_URI at "
                "another store) and run again"
            )
    return StoreError(
        f"MLflow tracking store {uri} failed ({first_line(err)[:200]}); fix it (or point "
        "MLFLOW_TRACKING_URI at another store) and run again"
    )


def _chain(err: BaseException) -> list[BaseException]:
    """`err` and the errors it was raised from or while handling (MLflow's registry, failing
    to create a model on a full disk, raises "not found" from looking it up again)."""
    chain: list[BaseException] = []
    while err is not None and err not in chain and len(chain) < 10:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def translate(err: BaseException) -> BaseException:
    """`err` as a one-line StoreError or OutputError when the store or a full disk caused it;
    any other error as it is."""
    if isinstance(err, OutputError | StoreError):
        return err
    if isinstance(err, STORE_ERRORS):
        return store_failure(err)
    if isinstance(err, OSError) and err.errno in NO_SPACE:
        return output_error(err.filename or _artifacts_here(), err) or err
    return err


def _artifacts_here() -> str:
    """Where the active run's artifacts go: what a full disk without a file name hit (MLflow
    copies artifacts without naming the file when the copy fails)."""
    run = mlflow.active_run()
    if run is None:
        return f"to the MLflow store {redacted(mlflow.get_tracking_uri())}"
    return f"the MLflow artifacts of run {run.info.run_id} ({run.info.artifact_uri})"


@contextmanager
def store_errors() -> Iterator[None]:
    """Raise the store's failures and full disks of the block as one line (see `translate`)."""
    try:
        yield
    except Exception as err:
        failure = translate(err)
        if failure is err:
            raise
        raise failure from err


class _OneLine(logging.Filter):
    """Drop MLflow's traceback of a database error (it is raised to us, and reported in one
    line); cut other store errors it logs (a failed background log) to their first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(_SQL_ERROR_LOG):
            return False
        if record.exc_info or "\n" in record.getMessage():
            record.msg, record.args = first_line(Exception(record.getMessage())), ()
            record.exc_info, record.exc_text = None, None
        return True


def quiet_store_logs() -> None:
    """Install the one-line filter on MLflow's loggers (once per process)."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in logger.filters):
            logger.addFilter(_OneLine())


SERVER_WAIT_ENV = "SIBEATGAN_SERVER_WAIT_S"
SERVER_WAIT_S = 60.0  # a server being restarted answers again well within this


def check_server(uri: str) -> None:
    """Stop early when a tracking server does not answer: MLflow would retry each request for
    minutes before failing (with a page of tracebacks). A refused connection is tried again for
    SERVER_WAIT_S seconds ($SIBEATGAN_SERVER_WAIT_S), so that a server being restarted (a
    shared one, mid-grid) is waited for. Any HTTP answer will do."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return
    deadline = time.monotonic() + float(os.environ.get(SERVER_WAIT_ENV, SERVER_WAIT_S))
    while True:
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=(10, 60))
            return
        except requests.exceptions.ConnectionError as err:
            if "refused" in str(err).lower() and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            why = "connection refused" if "refused" in str(err).lower() else type(err).__name__
        except requests.exceptions.RequestException as err:
            why = type(err).__name__
        raise StoreError(
            f"MLflow tracking server {redacted(uri)} does not answer ({why}); start it "
            "(`sibeatgan server`) or point MLFLOW_TRACKING_URI at a running one"
        ) from None
