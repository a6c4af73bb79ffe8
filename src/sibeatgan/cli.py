"""`sibeatgan`: the command line, one subcommand per pipeline stage."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from sibeatgan.config import Params, load_params, read_overrides
from sibeatgan.data.fetch import DataError
from sibeatgan.pipeline.layout import DEFAULT_LAYOUT
from sibeatgan.stages.entry import USER_ERRORS as STAGE_ERRORS
from sibeatgan.stages.entry import overrides_option, params_file_option, stop_on_sigterm

# errors whose message is the whole story: one line, exit 1, no traceback
USER_ERRORS = (*STAGE_ERRORS, DataError)


STUDY_RECIPE = "recipe.yaml"


json_option = click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the figures as one JSON object to this file.",
)


def _params_options(study: bool):
    """--params and -S/--set, and user errors as one clear line (exit 1). With `study`, the
    overrides in the summaries folder's recipe.yaml (--runs) come first, then -S."""

    def decorate(func):
        @params_file_option()
        @overrides_option
        @functools.wraps(func)
        def wrapper(params_path: str, overrides: tuple[str, ...], **kwargs):
            try:
                recipe = read_overrides(kwargs["runs_dir"] / STUDY_RECIPE) if study else []
                p = load_params(params_path, [*recipe, *overrides])
                return func(p, **kwargs)
            except USER_ERRORS as err:
                raise click.ClickException(str(err)) from err

        return wrapper

    return decorate


with_params = _params_options(study=False)
with_study_params = _params_options(study=True)


def folder_option(name: str, dest: str, default: str, help: str):
    """An option naming a folder (created when needed), with its default shown in --help."""
    return click.option(
        name,
        dest,
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(default),
        show_default=True,
        help=help,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sibeatgan")
def main() -> None:
    """SI-BeatGAN: unsupervised ECG arrhythmia detection on MIT-BIH with a BeatGAN teacher and
    a distilled student, tracked with MLflow. The stages run in order with `dvc repro`:
    preprocess -> split -> train-teacher -> train-student -> evaluate. Every knob is in
    params.yaml."""
    stop_on_sigterm()


@main.command("fetch-data")
@click.option(
    "--from",
    "source",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding the dataset's WFDB records (MIT-BIH: .hea/.dat/.atr). Default: "
    "$MITDB_DIR, or a download from PhysioNet when neither is given.",
)
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the records go. Default: runtime.records_dir of params.yaml (data/mitdb).",
)
@with_params
def fetch_data(p: Params, source: Path | None, dest: Path | None) -> None:
    """Put the records of preprocess.dataset (MIT-BIH 1.0.0 by default) into the data folder,
    checking every file's sha256 against PhysioNet's list. Files already present and intact are
    kept; none is replaced before its new copy is verified."""
    env = os.environ.get("MITDB_DIR")
    source = source or (Path(env) if env else None)
    dest = dest or Path(p.runtime.records_dir)
    from sibeatgan.data.fetch import commit_to_dvc, fetch
    from sibeatgan.datasets import dataset

    result = fetch(dest, source, dataset(p.preprocess.dataset))
    click.echo(f"{dest}: {result['verified']} files verified ({result['copied']} fetched)")
    tracked_by = commit_to_dvc(dest)
    if tracked_by:
        click.echo(f"{dest}: in DVC's cache, matching {tracked_by}")


def metrics_option(stage: str, what: str):
    """--metrics, defaulting to the stage's metrics file of the pipeline's layout."""
    default = str(DEFAULT_LAYOUT.metrics(stage))
    return click.option(
        "--metrics", default=default, show_default=True, help=f"Where to write {what}."
    )


@main.command()
@metrics_option("preprocess", "the per-class beat counts")
@with_params
def preprocess(p: Params, metrics: str) -> None:
    """Extract the beats of every record (both leads, 320 samples around each R), normalise
    them and label them, into runtime.beats_dir. Same params, same bytes."""
    from sibeatgan.stages import preprocess as stage

    click.echo(stage.run(p, metrics))


@main.command()
@metrics_option("split", "the per-part, per-class beat counts")
@with_params
def split(p: Params, metrics: str) -> None:
    """Assign the preprocessed beats to train / val / test for data.split (intra or inter),
    data.fold and data.split_seed, into runtime.prepared_dir. Changing the fold reruns only
    this and what follows."""
    from sibeatgan.stages import split as stage

    click.echo(stage.run(p, metrics))


FRESH = click.option(
    "--fresh",
    is_flag=True,
    help="Discard a stopped training in the output folder instead of resuming it (needed when "
    "it was trained with other params).",
)


@main.command("train-teacher")
@FRESH
@with_params
def train_teacher(p: Params, fresh: bool) -> None:
    """Train the BeatGAN teacher; keep G and D of the epoch chosen by train.selection. A
    stopped training of the same params resumes after its last finished epoch."""
    from sibeatgan.stages import train_teacher as stage

    click.echo(stage.run(p, resume=not fresh))


@main.command("train-student")
@click.option(
    "--teacher-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the teacher's G.pt, D.pt and fit.json. Default: models/teacher.",
)
@FRESH
@with_params
def train_student(p: Params, teacher_dir: Path | None, fresh: bool) -> None:
    """Train the student with the frozen teacher's guidance (student.kd, student.fd). A
    stopped training of the same params resumes after its last finished epoch."""
    from sibeatgan.stages import train_student as stage

    click.echo(stage.run(p, teacher_dir=teacher_dir, resume=not fresh))


@main.command()
@with_params
def evaluate(p: Params) -> None:
    """Score teacher and student on the test set: AUC, AP, F1 and per-class recall at the
    val-chosen threshold, oracle F1; ROC/PR curves; register both and choose the champion."""
    from sibeatgan.stages import evaluate as stage

    click.echo(stage.run(p))


@main.command()
@with_params
def promote(p: Params) -> None:
    """Point the registry alias `champion` at the best version for this config: the best
    student when it beats the teacher on registry.metric, else the teacher. The detector
    model's `champion` follows (the detector of the same training run)."""
    from mlflow import MlflowClient

    from sibeatgan import tracking
    from sibeatgan.tracking import registry
    from sibeatgan.tracking.store import store_errors

    with store_errors():
        tracking.setup()
        client = MlflowClient()
        decision = registry.promote(
            client, p.registry.model_name, p.registry.metric, tracking.teacher_config_key(p)
        )
        version = registry.follow_champion(client, p.registry.detector_name, decision)
    if version is not None:
        click.echo(f"{p.registry.detector_name}: champion -> v{version} (the same training run)")


@main.command()
@click.argument("records", nargs=-1, required=True, metavar="RECORD...")
@click.option(
    "--model",
    default=None,
    help="A trained model folder (models/student) or an MLflow model URI. Default: the "
    "registry's champion detector, models:/<registry.detector_name>@champion.",
)
@folder_option("--out", "out", "detections", "Folder for each record's results.")
@click.option(
    "--lead",
    default=None,
    help="The lead to read, by its name. Default: the lead of the dataset the model was trained "
    "on (MIT-BIH: MLII).",
)
@click.option(
    "--alarm-rate",
    type=click.Choice(["0.01", "0.05"]),
    default=None,
    help="Flag with the threshold that raised this false-alarm rate on val N beats. Default: "
    "0.01 when scoring record-adaptively, else the threshold that maximised F1 on val.",
)
@click.option(
    "--scoring",
    type=click.Choice(["auto", "adaptive", "beat"]),
    default="auto",
    show_default=True,
    help="adaptive: flag a beat by its robust z-score among the record's beats (median and "
    "MAD, no labels), with thresholds chosen on val in those units, which mean the same for "
    "every patient (needs 30 beats or more); beat: by its score alone, in the units of the "
    "training patients (the published protocol's); auto: adaptive where the record and the "
    "model allow it, else per beat with a warning.",
)
@params_file_option(
    "Parameter file naming the registered detector (registry.detector_name); its defaults "
    "apply where there is none."
)
def detect(
    records: tuple[str, ...],
    model: str | None,
    out: Path,
    lead: str,
    alarm_rate: str | None,
    scoring: str,
    params_path: str,
) -> None:
    """Score, flag and explain every beat of WFDB RECORDs (paths such as data/mitdb/100, any
    sampling rate from 100 to 20000 Hz: resampled to 360 Hz). Beats come from the record's
    annotations (.atr) when it has them, else (and after annotations cut short) from the QRS
    detector; filter, windows and normalisation are those of the model's training. Gaps
    (missing values, a lead flat for 2 s or more) are left out and reported; the stretches
    between them are analysed each on its own. A beat is flagged by its robust z-score among
    the record's beats (record-adaptive: the default for records of 30 beats or more) or by
    its score (--scoring beat).
    Writes OUT/<record>/: beats.csv (sample, time, score, z when adaptive, flag, and the
    reference label when annotated), summary.json (beats, flagged, gaps,
    per-class recall and the N false-alarm rate when annotated) and report.html (the record
    with flagged beats and gaps marked, and the top flagged beats with their reconstruction
    and per-tick error), for every record of the call or, when one fails, for none."""
    from sibeatgan.detection.model import champion_uri
    from sibeatgan.detection.run import detect as run_detect

    try:
        p = load_params(params_path) if Path(params_path).exists() else Params()
        run_detect(
            list(records),
            model or champion_uri(p.registry.detector_name),
            out,
            lead,
            float(alarm_rate) if alarm_rate else None,
            echo=click.echo,
            warn=functools.partial(click.echo, err=True),
            scoring=scoring,
        )
    except USER_ERRORS as err:
        raise click.ClickException(str(err)) from err


@main.command("bench-detect")
@click.argument("record")
@click.option("--model", required=True, help="A trained model folder or an MLflow model URI.")
@click.option("--batch", default=256, show_default=True, help="Beats per served request.")
@click.option("--requests", "requests_n", default=20, show_default=True, help="Timed requests.")
@json_option
def bench_detect(
    record: str, model: str, batch: int, requests_n: int, json_path: str | None
) -> None:
    """Measure detection speed on this machine: `sibeatgan detect RECORD` end to end in a new
    process (imports, reading, filtering, QRS detection, scoring and the report), and the
    detector served by `mlflow models serve` on loopback: beats/s for requests of --batch
    beats."""
    from sibeatgan.detection.speed import bench_detect as run
    from sibeatgan.io import write_json

    try:
        out = run(record, model, batch, requests_n, echo=click.echo)
    except USER_ERRORS as err:
        raise click.ClickException(str(err)) from err
    if json_path:
        write_json(json_path, out)
        click.echo(f"figures written to {json_path}")


@main.command()
@click.option(
    "--steps",
    default=30,
    show_default=True,
    help="Timed training steps per setting (at the default batch; fewer at larger ones).",
)
@click.option("--warmup", default=5, show_default=True, help="Untimed steps before each timing.")
@json_option
@with_params
def bench(p: Params, steps: int, warmup: int, json_path: str | None) -> None:
    """Measure training and scoring speed on this machine: the original code's training step
    (reference), ours at the params.yaml batch and precision and at faster settings, the
    machine's matmul peak (fp32, and bf16 where the CPU has it), and scoring speed at batch
    1024 and batch 1. Prints samples/s, the ratio to the reference and GFLOP/s as a fraction of
    the peak."""
    from sibeatgan.io import write_json
    from sibeatgan.pipeline.trained import set_threads
    from sibeatgan_bench.bench import run_bench

    set_threads(p)
    precision = p.train.precision if p.train.precision != "auto" else "fp32"
    out = run_bench(steps, warmup, p.train.batch_size, precision, echo=click.echo)
    if json_path:
        write_json(json_path, out)
        click.echo(f"figures written to {json_path}")


@main.command("bench-step")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto: the GPU when there is one.",
)
@click.option("--batch", default=64, show_default=True, type=click.IntRange(min=2))
@click.option("--steps", default=50, show_default=True, type=click.IntRange(min=1))
@json_option
def bench_step(device: str, batch: int, steps: int, json_path: str | None) -> None:
    """Time the training step of the paper's recipe (fp32, constant learning rate) on one
    device: eager, and as a CUDA graph where there is CUDA; as seconds per epoch of fold 0's
    train data, with the device's fp32 and bf16 matmul peak beside it."""
    import torch

    from sibeatgan.evaluation.scoring import pick_device
    from sibeatgan.io import write_json
    from sibeatgan_bench.bench import run_step_bench

    where = pick_device() if device == "auto" else torch.device(device)
    if where.type == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda: no CUDA device here; use --device cpu")
    out = run_step_bench(where, batch, steps, echo=click.echo)
    if json_path:
        write_json(json_path, out)
        click.echo(f"figures written to {json_path}")


@main.command()
@click.option(
    "--backend-store-uri",
    envvar="SIBEATGAN_BACKEND_STORE_URI",
    required=True,
    metavar="URI",
    help="The database of runs and models, e.g. postgresql://mlflow@db-host:5432/mlflow "
    "(env SIBEATGAN_BACKEND_STORE_URI); sqlite:///file.db also works, for one machine.",
)
@click.option(
    "--artifacts-destination",
    default="mlartifacts",
    show_default=True,
    metavar="URI",
    help="Where the server keeps artifacts (checkpoints, models, plots): a folder, or an "
    "object store such as s3://bucket/mlflow. Clients reach them through the server.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 for other machines (then also --allowed-hosts).",
)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=4, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--allowed-hosts",
    default=None,
    help="Host headers the server answers, comma-separated (e.g. mlflow.lab.example:5000); "
    "MLflow's default is localhost and private addresses.",
)
def server(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    workers: int,
    allowed_hosts: str | None,
) -> None:
    """Run a shared MLflow tracking server (runs, registry and proxied artifacts) for several
    people and machines. Point every command at it with MLFLOW_TRACKING_URI=http://HOST:PORT;
    the embedded default (mlflow.db, mlruns/) is unchanged without it. See docs/scale-out.md."""
    from sibeatgan.tracking.server import redacted, server_command

    try:
        command, env = server_command(
            backend_store_uri, artifacts_destination, host, port, workers, allowed_hosts
        )
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"MLflow server on http://{host}:{port} (store {redacted(backend_store_uri)})")
    sys.stdout.flush()  # exec replaces the process: what is still buffered would be lost
    os.execvpe(command[0], command, {**os.environ, **env})


@main.command("run-experiment")
@click.option("--kd", type=bool, help="Score distillation on/off (student.kd).")
@click.option("--fd", type=bool, help="Feature distillation on/off (student.fd).")
@click.option("--teacher-epochs", type=click.IntRange(min=1), help="The teacher's train.epochs.")
@click.option("--student-epochs", type=click.IntRange(min=1), help="The student's student.epochs.")
@click.option("--fold", type=click.IntRange(0, 4), help="Test fold 0-4 (data.fold).")
@click.option(
    "--seed", type=click.IntRange(min=0), help="Seed for initial weights and batch order."
)
@click.option("--records", default="", help="Comma-separated record numbers; empty = params.yaml.")
@click.option(
    "--overrides",
    "more_overrides",
    default="",
    help="More overrides, space-separated: 'train.lr=2e-4 student.temperature=2'.",
)
@folder_option(
    "--output", "output", "outputs", "Folder for prepared data, checkpoints and figures."
)
@with_params
def run_experiment(
    p: Params,
    kd: bool | None,
    fd: bool | None,
    teacher_epochs: int | None,
    student_epochs: int | None,
    fold: int | None,
    seed: int | None,
    records: str,
    more_overrides: str,
    output: Path,
) -> None:
    """Student training with the teacher's guidance, all under one MLflow run: the entry point
    of `mlflow run .`. The teacher is reused from the tracking store when one of the same fold
    and config exists, else trained first (as a child run). An option not given keeps
    params.yaml's value."""
    from sibeatgan.config import with_overrides
    from sibeatgan.pipeline.experiment import run_experiment as run

    chosen = {
        "student.kd": kd,
        "student.fd": fd,
        "train.epochs": teacher_epochs,
        "student.epochs": student_epochs,
        "data.fold": fold,
        "seed": seed,
    }
    extra = [f"{k}={v}" for k, v in chosen.items() if v is not None]
    extra += more_overrides.split()
    if records.strip():
        extra.append(f"preprocess.records=[{records}]")
    p = with_overrides(p, extra)
    reports = run(p, output)
    for role, r in reports.items():
        click.echo(f"{role:8s} test AUC {r['test_auc']:.4f}  AP {r['test_ap']:.4f}")


def _int_list(ctx, param, value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


def _fold_list(ctx, param, value: str) -> list[int]:
    folds = _int_list(ctx, param, value)
    bad = [f for f in folds if not 0 <= f <= 4]
    if bad or not folds:
        raise click.BadParameter(
            f"{value!r}: folds are 0 to 4, e.g. 0 or 0,1,2,3,4", ctx=ctx, param=param
        )
    return folds


@main.group()
def study() -> None:
    """The distillation study: named variants (teacher, students with and without
    distillation, a compact student, an augmented teacher) trained per seed against the same
    teacher, each run summarised to a JSON file in reports/runs/ for `sibeatgan report`.

    The study's training recipe is params.yaml with the overrides listed in
    reports/runs/recipe.yaml (when that file exists), then any -S; `study run` and `report`
    both read it, so the summaries and the report agree on what counts as current."""


@study.command("list")
@folder_option("--runs", "runs_dir", "reports/runs", "Folder of the run summaries.")
@folder_option(
    "--work", "work", "outputs/study", "Folder for prepared data and checkpoints (not committed)."
)
@with_study_params
def study_list(p: Params, runs_dir: Path, work: Path) -> None:
    """The recipe, the variants, what each changes, the summaries already written (those
    of another recipe marked stale: `study run` would train them again) and the runs in --work
    that have not finished (running, or stopped: `study run` resumes them)."""
    from sibeatgan.io import read_json
    from sibeatgan.study.runs import VARIANTS, summary_is_current, unfinished_runs

    unfinished = unfinished_runs(work, p)

    recipe = read_overrides(runs_dir / STUDY_RECIPE)
    click.echo(f"recipe ({runs_dir / STUDY_RECIPE}): {' '.join(recipe) or 'params.yaml as is'}")
    for name, v in VARIANTS.items():
        done = [
            f.stem if summary_is_current(read_json(f), p) else f"{f.stem} (stale)"
            for f in sorted((runs_dir / name).glob("*.json"))
        ]
        click.echo(f"{name:16s} {v.role:8s} {v.about}")
        click.echo(f"{'':16s} overrides: {' '.join(v.overrides) or '(none)'}")
        click.echo(f"{'':16s} done: {', '.join(done) or '-'}")
        if name in unfinished:
            click.echo(f"{'':16s} unfinished: {', '.join(unfinished[name])}")


@study.command("run")
@click.argument("variants", nargs=-1, required=True)
@click.option(
    "--seeds", default="0,1,2", show_default=True, callback=_int_list, help="Seeds, e.g. 0,1,2."
)
@click.option(
    "--fold",
    "--folds",
    "folds",
    default="0",
    show_default=True,
    callback=_fold_list,
    help="Test fold(s), 0-4, e.g. 0 or 0,1,2,3,4: each fold's runs train against that fold's "
    "teachers.",
)
@click.option(
    "--split",
    type=click.Choice(["intra", "inter"]),
    default="intra",
    show_default=True,
    help="intra: beat-level folds (published); inter: de Chazal DS1/DS2 patients.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Train again from scratch even when a summary (or a stopped training) exists.",
)
@click.option(
    "--jobs",
    "-j",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Runs trained at once on a local Ray cluster, each in its own process with its share "
    "of the CPU threads (unless -S runtime.threads says otherwise) and a log in WORK/logs/; a "
    "student waits for its seed's teacher, and a run that fails is reported while the others "
    "go on.",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS",
    default=None,
    help="Run the grid on an existing Ray cluster (e.g. ray://head:10001, or auto for the "
    "cluster this machine is part of): each run a task with -S runtime.threads CPUs (default 1) "
    "and a GPU share where the cluster has GPUs. Every node needs the project at the same "
    "path and a tracking server it reaches (MLFLOW_TRACKING_URI); see docs/scale-out.md.",
)
@click.option(
    "--gpus-per-run",
    type=click.FloatRange(min=0, max=1),
    default=None,
    help="GPU fraction each run asks of the Ray cluster [default: 0.25 where it has GPUs, else 0].",
)
@folder_option("--runs", "runs_dir", "reports/runs", "Folder for the run summaries (commit it).")
@folder_option(
    "--work", "work", "outputs/study", "Folder for prepared data and checkpoints (not committed)."
)
@with_study_params
def study_run(
    p: Params,
    variants: tuple[str, ...],
    seeds: list[int],
    folds: list[int],
    split: str,
    force: bool,
    jobs: int,
    ray_address: str | None,
    gpus_per_run: float | None,
    runs_dir: Path,
    work: Path,
) -> None:
    """Train VARIANTS (names from `sibeatgan study list`) for each seed, seed by seed; a
    student's teacher of the same seed is trained first when missing. Runs with a summary
    already in --runs are skipped unless --force; a summary trained with other params (another
    recipe) is trained again and replaced. A run stopped before its last epoch (Ctrl-C, a
    closed session) resumes after its last finished epoch, in the same MLflow run, and trains
    as if it had never stopped. Every run is tracked in MLflow (experiment
    sibeatgan-study) and scores val and test each epoch, so the summary holds the test figures
    under each selection rule. The recipe is params.yaml, then --runs/recipe.yaml, then -S;
    -S overrides apply to every run (and change its budget: keep them the same across
    variants, or better, put them in recipe.yaml)."""
    from sibeatgan.io import ensure_writable
    from sibeatgan.study.cluster import ClusterError
    from sibeatgan.study.grid import Where, plan, run_tasks
    from sibeatgan.study.runs import VARIANTS

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise click.BadParameter(
            f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}",
            param_hint="VARIANTS",
        )
    ensure_writable(runs_dir, work)
    where = Where(split, work, runs_dir)
    tasks, notes = plan(p, variants, seeds, where, force, tuple(folds))
    for note in notes:
        click.echo(note)
    try:
        failed = run_tasks(p, tasks, where, force, jobs, click.echo, ray_address, gpus_per_run)
    except ClusterError as err:  # no cluster there, a GPU share without GPUs
        raise click.ClickException(str(err)) from err
    if failed:
        raise click.ClickException(f"{len(failed)} run(s) failed: {', '.join(map(str, failed))}")


@main.command()
@folder_option(
    "--runs",
    "runs_dir",
    "reports/runs",
    "Folder of the run summaries written by `sibeatgan study run`.",
)
@folder_option(
    "--out",
    "out_dir",
    "reports",
    "Where results.md, results.json, results.png, curves.png and folds.png go.",
)
@with_study_params
def report(p: Params, runs_dir: Path, out_dir: Path) -> None:
    """Summarise the study from the run summaries: per variant, seeds, mean ± std of test AUC,
    AP, F1 and per-class recall under val-AUC and unsupervised selection, the paired difference
    to the teacher on the same seeds (and whether it exceeds seed noise), scoring cost, and the
    published figures beside them; for variants run on several folds, their figures over folds
    and fold-by-fold differences (folds.png). Only summaries trained with the params
    `sibeatgan study run` would use now (params.yaml, then --runs/recipe.yaml, then -S) count;
    stale ones are listed, not averaged."""
    from sibeatgan.io import ensure_writable
    from sibeatgan.study.report import write_report

    try:
        ensure_writable(out_dir)
        results, written = write_report(runs_dir, out_dir, p)
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from err
    for name, v in results["variants"].items():
        click.echo(
            f"{name:16s} seeds {v['n_seeds']}  test AUC {v['test_auc_mean']:.4f}"
            + (f" ± {v['test_auc_std']:.4f}" if v["test_auc_std"] is not None else "")
        )
    click.echo("written: " + ", ".join(str(path) for path in written))
