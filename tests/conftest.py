"""Shared fixtures: small synthetic WFDB records, so unit tests need no MIT-BIH."""

from __future__ import annotations

import ast
import multiprocessing as mp
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import wfdb

from sibeatgan.config import Params, with_overrides

FS = 360
# the paper's optimiser (lr 1e-4, constant, no EMA): tiny runs learn something in 2 epochs
PAPER_OPTIMISER = [
    "train.lr=1e-4",
    "train.ema=0",
    "train.lr_schedule=constant",
    "train.warmup_steps=0",
]
REPO = Path(__file__).resolve().parents[1]


def _beat(length: int, centre: float, width: float, amp: float) -> np.ndarray:
    t = np.arange(length)
    return amp * np.exp(-0.5 * ((t - centre) / width) ** 2)


def write_record(
    folder: Path,
    name: str,
    symbols: list[str],
    seconds: float = 40.0,
    lead_names: tuple[str, str] = ("MLII", "V1"),
    seed: int = 0,
    fs: int = FS,
    annotations: bool = True,
    annotator: str = "atr",
) -> np.ndarray:
    """Write `name`.hea/.dat/.atr: one beat a second (N narrow, others wide and inverted),
    with the annotation at each R peak (no .atr without `annotations`), sampled at `fs`.
    Returns the annotation samples."""
    rng = np.random.default_rng(seed)
    n = int(seconds * fs)
    k = fs / FS  # beat shapes keep their duration at any rate
    mlii = 0.02 * rng.standard_normal(n)
    samples = np.arange(len(symbols)) * fs + fs // 2
    for s, sym in zip(samples, symbols, strict=True):
        if sym == "N":
            mlii += _beat(n, s, 4 * k, 1.2) + _beat(n, s + 90 * k, 18 * k, 0.3)
        elif sym in "VAFQ/":
            amp = -1.0 if sym == "V" else 0.9
            mlii += _beat(n, s, 10 * k, amp) + _beat(n, s + 100 * k, 25 * k, 0.25)
    other = 0.5 * mlii + 0.02 * rng.standard_normal(n)
    cols = [other, mlii] if lead_names[1] == "MLII" else [mlii, other]  # full beats: MLII
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        name,
        fs=fs,
        units=["mV", "mV"],
        sig_name=list(lead_names),
        p_signal=np.stack(cols, axis=1),
        fmt=["212", "212"],
        adc_gain=[200.0, 200.0],
        baseline=[0, 0],
        write_dir=str(folder),
    )
    if annotations:
        wfdb.wrann(name, annotator, sample=samples, symbol=symbols, write_dir=str(folder))
    return samples


def synthetic_symbols(n_beats: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    pool = ["N"] * 16 + ["V", "A", "F", "Q"]
    return [pool[i] for i in rng.integers(0, len(pool), n_beats)]


@pytest.fixture(scope="session")
def synthetic_mitdb(tmp_path_factory) -> Path:
    """Three records (named 100, 101, 103) of 120 beats each."""
    folder = tmp_path_factory.mktemp("mitdb")
    for i, name in enumerate(["100", "101", "103"]):
        write_record(folder, name, synthetic_symbols(120, i), seconds=121, seed=i)
    return folder


@pytest.fixture
def tiny_params(synthetic_mitdb: Path, tmp_path: Path) -> Params:
    """Params for a fast pipeline on the synthetic records, outputs under tmp_path."""
    overrides = tiny_overrides(synthetic_mitdb, tmp_path / "prepared") + PAPER_OPTIMISER
    return with_overrides(Params(), overrides)


def tiny_overrides(mitdb: Path, prepared: Path | str) -> list[str]:
    """A fast pipeline on the synthetic records: tiny networks, 2 epochs of batch 16 for the
    teacher and 1 more for the student (which starts from the teacher, as by default)."""
    return [
        f"runtime.records_dir={mitdb}",
        f"runtime.beats_dir={prepared}_beats",
        f"runtime.prepared_dir={prepared}",
        "preprocess.records=[100, 101, 103]",
        "runtime.workers=1",
        "model.width=4",
        "model.nz=8",
        "train.epochs=2",
        "student.epochs=1",
        "train.batch_size=16",
        "runtime.log_every=2",
        "runtime.threads=1",
    ]


def prepare(p: Params) -> None:
    """The `preprocess` and `split` stages of `p`."""
    from sibeatgan.data.preprocess import run_preprocess, run_split

    run_preprocess(p)
    run_split(p)


def dead_pid() -> int:
    """The pid of a process that has ended (as a killed training's would be)."""
    import multiprocessing as mp

    dead = mp.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    return dead.pid


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch) -> str:
    """A private MLflow store for one test; the working directory is tmp_path."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(uri)  # an earlier test may have pointed the fluent API elsewhere
    return uri


def mitdb_dir() -> Path | None:
    value = os.environ.get("MITDB_DIR")
    return Path(value).resolve() if value else None


def use_copy_of(root: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy of a trained project folder (built once per module by a fixture) as the working
    directory, with its own copy of the MLflow store, so each test starts from the same state."""
    import mlflow

    work = tmp_path / "work"
    shutil.copytree(root, work)
    monkeypatch.chdir(work)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(uri)
    return work


@contextmanager
def trained_once(root: Path) -> Iterator[None]:
    """Inside the block the working directory is `root` with a private MLflow store there: for
    module-scoped fixtures that train once."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        yield


@pytest.fixture(scope="module")
def prepared(synthetic_mitdb, tmp_path_factory):
    """The tiny params and their prepared data (the synthetic records preprocessed once per
    module that asks: the detect tests')."""
    folder = tmp_path_factory.mktemp("prepared")
    p = with_overrides(Params(), tiny_overrides(synthetic_mitdb, folder) + PAPER_OPTIMISER)
    prepare(p)
    return p


@pytest.fixture(scope="module")
def model_dir(prepared, tmp_path_factory) -> Path:
    """A detector folder as training leaves it (untrained weights: detection mechanics only)."""
    import torch

    from sibeatgan.data.preprocess import load_data
    from sibeatgan.data.split import VAL
    from sibeatgan.evaluation.scores import Models
    from sibeatgan.io import save_state_dict
    from sibeatgan.models import Discriminator, Generator
    from sibeatgan.pipeline.train import write_detector

    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    g = Generator(1, prepared.model.nz, prepared.model.width).eval()
    d = Discriminator(1, prepared.model.width).eval()
    save_state_dict(folder / "G.pt", g.state_dict())
    save_state_dict(folder / "D.pt", d.state_dict())
    data = load_data(prepared)
    x, cls = data.part(VAL, 1)
    records = data.records[data.split == VAL]
    models = Models(g, d)
    write_detector(
        folder, models, prepared.model.width, prepared, x, cls, records, role="teacher", run_id="r"
    )
    return folder


def detector_with_score(model_dir: Path, tmp_path: Path, score: dict, keep_d: bool = True) -> Path:
    """A copy of the detector folder `model_dir` at tmp_path/model whose detector.json scores
    with `score` ({"name", "params"}); without D.pt when not keep_d."""
    from sibeatgan.io import read_json, write_json

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    if not keep_d:
        (folder / "D.pt").unlink()
    write_json(folder / "detector.json", {**read_json(folder / "detector.json"), "score": score})
    return folder


def sibeatgan_imports(path: Path) -> set[str]:
    """The dotted names a source file imports from sibeatgan, anywhere in it (function-level
    imports too): each module, and for `from M import n` also `M.n` (a submodule of M, or a
    name defined in it)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n == "sibeatgan" or n.startswith("sibeatgan.")}


def _open_experiments(uri: str, names: list[str], barrier, errors) -> None:
    """One process of `open_experiments_at_once`: `tracking.setup()` for each experiment."""
    from sibeatgan import tracking

    os.environ["MLFLOW_TRACKING_URI"] = uri
    for name in names:
        os.environ["MLFLOW_EXPERIMENT_NAME"] = name
        barrier.wait()  # every process opens this experiment at the same moment
        try:
            tracking.setup()
        except Exception as exc:  # reported to the parent, which fails the test
            errors.put(f"{name}: {type(exc).__name__}: {exc}".splitlines()[0])


def open_experiments_at_once(uri: str, names: list[str], n: int = 4) -> None:
    """`n` fresh (spawned) processes open the store at `uri` and each of `names` in turn, all
    at the same moment; fails the test with their errors, or their exit codes."""
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(n), ctx.Queue()
    args = (uri, names, barrier, errors)
    procs = [ctx.Process(target=_open_experiments, args=args) for _ in range(n)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    failures = [errors.get() for _ in range(errors.qsize())]
    assert not failures and all(proc.exitcode == 0 for proc in procs), failures
