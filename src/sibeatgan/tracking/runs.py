"""MLflow runs: the store, the experiment, a training run's life (started, resumed, ended as it
ends, orphans closed) and what it logs while it trains.

Default store: SQLite `mlflow.db` in the working directory (the repository root), artifacts under
`mlruns/`, so a bare `mlflow ui` there shows every run. `MLFLOW_TRACKING_URI` points elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.entities import Experiment
from mlflow.exceptions import MlflowException
from mlflow.utils.async_logging.run_operations import RunOperations

from sibeatgan.config import Params
from sibeatgan.io import StoreError, ensure_writable, first_line
from sibeatgan.tracking.recipes import run_tags
from sibeatgan.tracking.server import redacted
from sibeatgan.tracking.store import (
    STORE_ERRORS,
    check_server,
    quiet_store_logs,
    store_errors,
    translate,
)

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "sibeatgan"
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
STOPPED_TAG = "stopped_because"  # on a run whose process died; removed when it resumes
FAILED_TAG = "failed_because"  # on a run that an error ended: the error's line
_CHECKED_STORES: set[str] = set()  # stores found usable (a writable folder, a live server)
_PENDING_LOGS: list[RunOperations] = []  # step losses logged in the background, not yet checked


def store_lock_path(uri: str) -> Path | None:
    """The lock file beside a SQLite store (`sqlite:///mlflow.db` -> `mlflow.db.lock`)."""
    prefix = "sqlite:///"
    return Path(uri.removeprefix(prefix) + ".lock") if uri.startswith(prefix) else None


def setup() -> str:
    """Point MLflow at the project's store; inside `mlflow run` keep its experiment. A store
    that cannot be used (read-only, damaged, a server that does not answer) stops here, in one
    line naming its URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    quiet_store_logs()
    if uri not in _CHECKED_STORES:  # once per process
        _check_store(uri)
        _CHECKED_STORES.add(uri)
    mlflow.set_tracking_uri(uri)
    with store_errors():
        _open_experiment(uri)
    return uri


def _check_store(uri: str) -> None:
    """A local store's folder must be writable; a server must answer."""
    if uri.startswith("sqlite:///"):
        try:
            ensure_writable(Path(uri.removeprefix("sqlite:///")).parent)
        except PermissionError as err:  # "cannot write to FOLDER (why); <fix for outputs>"
            raise StoreError(
                f"MLflow tracking store {redacted(uri)}: {str(err).split(';')[0]}; make it "
                "writable or point MLFLOW_TRACKING_URI at another store"
            ) from None
    check_server(uri)


def _open_experiment(uri: str) -> None:
    """Set the experiment (creating it and the store when needed), unless `mlflow run` has."""
    if not os.environ.get("MLFLOW_EXPERIMENT_ID") and mlflow.active_run() is None:
        # the first call creates a SQLite store by running its schema migrations, which collide
        # when two processes (two `study run` shells, `--jobs`) create the same store at once
        lock = store_lock_path(uri)
        try:
            with FileLock(lock) if lock else nullcontext():
                name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
                _create_experiment(name)
                _mark_model_training(mlflow.set_experiment(name))
        finally:
            # set_experiment also exports MLFLOW_EXPERIMENT_ID, which would pin every later
            # call in this process to this experiment (and, left behind by a failure here,
            # skip opening the next one); only `mlflow run` should set it
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


# Several processes (a grid's workers, other machines on a tracking server) may open the same
# experiment at once. Creating it and tagging it are each a race whose loser gets an error from
# the store (a duplicate name; on PostgreSQL, a duplicate tag key): the loser finds the work done.


def _create_experiment(name: str) -> None:
    """Create the experiment `name`, already of our kind (in one write, so no process sees it
    untagged), unless it exists."""
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(name) is not None:
        return
    try:
        # MLflow 3's UI opens an experiment of no kind as a GenAI one (traces)
        client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    except MlflowException:
        if client.get_experiment_by_name(name) is None:
            raise


def _mark_model_training(experiment: Experiment) -> None:
    """Tag an experiment made elsewhere (by `mlflow experiments create`, an older version) as
    one of model training."""
    if experiment.tags.get(EXPERIMENT_KIND_TAG) == MODEL_TRAINING:
        return
    client = mlflow.MlflowClient()
    try:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    except MlflowException:
        tags = client.get_experiment(experiment.experiment_id).tags
        if tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
            raise


@contextmanager
def training_run(
    p: Params, role: str, use_active: bool = False, run_id: str | None = None, **tags: str
) -> Iterator:
    """A run for one training: the active run itself when `use_active` (the run `mlflow run`
    made), a child of the active run when there is one, else a new top-level run. `run_id`
    reopens a stopped run to resume it, if the store still has it. A failure of the store, or
    a full disk, is one line (StoreError, OutputError); the run ends FAILED, saying why."""
    with store_errors():
        setup()
        close_orphaned_runs()
        with _run_for(role, use_active, run_id) as run, _ended_as_it_ends():
            yield _start(run, p, role, tags)


def _run_for(role: str, use_active: bool, run_id: str | None):
    """The run a training logs to, as a context that ends it (unless `mlflow run` made it)."""
    active = mlflow.active_run()
    if use_active:  # a new run resumes MLFLOW_RUN_ID when `mlflow run` set it
        return nullcontext(active) if active is not None else mlflow.start_run()
    nested = active is not None
    if run_id is not None and _run_exists(run_id):
        return mlflow.start_run(run_id=run_id, nested=nested)
    return mlflow.start_run(run_name=role, nested=nested)


def _run_exists(run_id: str) -> bool:
    """Whether the store holds this run and it is not deleted (a deleted run cannot restart)."""
    try:
        return mlflow.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


@contextmanager
def _ended_as_it_ends() -> Iterator[None]:
    """End the active run as KILLED when Ctrl-C (or SIGTERM, see `cli.main`) stops training,
    and as FAILED, tagged with the error's line (FAILED_TAG), when an error does (a full disk,
    the store), so the MLflow UI does not show it RUNNING forever. The step losses logged in
    the background are waited for first: their failure is the run's. A store too broken to
    record the end leaves the run RUNNING, and the next training ends it (close_orphaned_runs)."""
    try:
        yield
        wait_for_logging()
    except KeyboardInterrupt:
        _end_active("KILLED")
        raise
    except Exception as err:
        failure = translate(err)  # while the run is active: it names the run's artifacts
        _end_active("FAILED", first_line(failure))
        if failure is err:
            raise
        raise failure from err


def _end_active(status: str, why: str | None = None) -> None:
    """End the active run as `status`, as far as the store lets (it may be what failed)."""
    _PENDING_LOGS.clear()
    if why:
        with contextlib.suppress(*STORE_ERRORS):
            mlflow.set_tag(FAILED_TAG, why[:1000])
    with contextlib.suppress(*STORE_ERRORS):
        mlflow.end_run(status)  # takes the run off the active stack even when the store fails


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def close_orphaned_runs() -> list[str]:
    """End as KILLED the RUNNING runs this machine started whose process is gone (a closed
    session, SIGKILL, a power cut: nothing ran `_ended_as_it_ends`), so `mlflow ui` does not
    show them running forever. Runs of other machines are left alone. A later `study run` that
    resumes one of them reopens it as RUNNING. Returns the run ids it ended."""
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"attributes.status = 'RUNNING' and tags.host = '{socket.gethostname()}'",
        output_format="list",
    )
    client = mlflow.MlflowClient()
    ended = []
    for run in runs:
        pid = run.data.tags.get("pid", "")
        if pid.isdigit() and not _process_alive(int(pid)):
            client.set_tag(run.info.run_id, STOPPED_TAG, f"process {pid} ended mid-run")
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended


def _start(run, p: Params, role: str, tags: dict[str, str]):
    # host and pid: how a later run tells a run whose process died from one still training
    mlflow.set_tags({"host": socket.gethostname(), "pid": str(os.getpid())})
    if STOPPED_TAG in mlflow.get_run(run.info.run_id).data.tags:  # a stopped run, resumed
        mlflow.delete_tag(STOPPED_TAG)
    mlflow.set_tags(run_tags(p, role, **tags))
    # `mlflow run` has already logged its own -P values (e.g. seed='' for "params.yaml");
    # params cannot change, so those keep their value and the resolved one is in the tags.
    logged = mlflow.get_run(run.info.run_id).data.params
    mlflow.log_params({k: str(v) for k, v in p.flat().items() if k not in logged})
    return run


# MLflow's UI draws a chart section per key prefix ("epoch/val_auc" in section "epoch"), prefixed
# sections in alphabetical order before the unprefixed single values: so the curves lead
EPOCH_PREFIX, STEP_PREFIX = "epoch/", "step/"


def log_step(step: int, values: dict[str, float]) -> None:
    """Step losses, as `step/loss_g` etc., logged in the background (checked each epoch)."""
    _PENDING_LOGS.append(
        mlflow.log_metrics(
            {STEP_PREFIX + k: v for k, v in values.items()}, step=step, synchronous=False
        )
    )


def wait_for_logging() -> None:
    """Wait for the step losses logged in the background; raise if logging any of them failed
    (MLflow only logs such a failure)."""
    pending = list(_PENDING_LOGS)
    _PENDING_LOGS.clear()
    for operations in pending:
        if operations is not None:
            operations.wait()


def log_epoch(row: dict[str, float]) -> None:
    """An epoch's row, as `epoch/val_auc` etc. at step = epoch (after checking that the
    epoch's step losses were logged)."""
    wait_for_logging()
    epoch = int(row["epoch"])
    mlflow.log_metrics({EPOCH_PREFIX + k: v for k, v in row.items() if k != "epoch"}, step=epoch)


def log_file(path: Path, artifact_path: str | None = None) -> None:
    """mlflow.log_artifact; a full disk under the artifacts (or a store's failure) is one line
    naming where they go (said while the run is active: it knows the place)."""
    with store_errors():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_figure_files(paths: list[Path]) -> None:
    for path in paths:
        log_file(path, artifact_path="plots")
