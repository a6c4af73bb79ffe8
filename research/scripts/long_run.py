"""Long-run side-by-side: the official BeatGAN loop and ours on the same prepared fold.

Trains one run for many epochs and writes, after every epoch, one CSV row per epoch with the
same figures for either loop, each computed on the weights of that epoch:

- `val_auc_eval`, `test_auc_eval`: G in eval mode with the running BatchNorm statistics of
  training (our protocol);
- `val_auc_train`, `test_auc_train`: G in train mode, batches of 64 in a shuffled order (the
  official `validate`, which computes the published per-epoch figures);
- `test_auc_official`: eval mode after a train-mode pass over val (the state the official code
  saves and tests: val batches overwrite the running statistics);
- `val_auc_bn`, `test_auc_bn`: eval mode with BatchNorm statistics recomputed over 16,384
  train beats (`torch.optim.swa_utils.update_bn`);
- `val_auc_valn`, `test_auc_valn`: eval mode with BatchNorm statistics recomputed over the val
  N beats (held-out normal beats, no anomaly in them; val's own figure is then optimistic);
- `test_auc_selfbn`: eval mode with statistics recomputed over the test beats themselves
  (unlabelled, transductive: what a detector could do with a whole new record);
- step-loss quantiles of the epoch (D, G, and G's reconstruction and adversarial terms) and
  the number of D re-initialisations.

    python research/scripts/long_run.py ours NAME --epochs 40 -S runtime.threads=1 [-S ...]
    python research/scripts/long_run.py official NAME --code PATH --epochs 40 --threads 1

`official` imports the unmodified official code from PATH (`experiments/ecg` of the public
BeatGAN repository, fetched for the comparison and never committed) and runs its own
`train_epoch`. `ours` runs `sibeatgan.training.loop.fit` with params.yaml plus the overrides
and the switches named by `--switch` (each moves one behaviour to the official's). Both
resume after their last finished epoch from WORK/NAME (default outputs/long-run).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

from sibeatgan.config import load_params
from sibeatgan.data.preprocess import load_data, prepared_key
from sibeatgan.data.split import TEST, TRAIN, VAL
from sibeatgan.evaluation.metrics import auc_ap
from sibeatgan.io import atomic_path, read_json, write_csv, write_json
from sibeatgan.models import build_models
from sibeatgan.provenance import git_commit
from sibeatgan.training import loop
from sibeatgan.training import state as train_state

OUT = Path("research/probes/long-run")
WORK = Path("outputs/long-run")
BN_BEATS = 16384
SCORE_BATCH = 1024
OFFICIAL_BATCH = 64
SWITCHES = {
    "sigmoid_bce": "D's loss as the official computes it: BCELoss on sigmoid outputs (zero "
    "gradient once a sigmoid rounds to 1 in float32) instead of BCE with logits",
    "keep_adam": "a D re-initialisation keeps D's Adam moments (the official) instead of zeroing",
    "double_bn": "G runs forward twice per step (the official's D step and G step each call G), so "
    "G's BatchNorm running statistics move twice per step with the same batch statistics: "
    "momentum 0.19 instead of 0.1 (set as such; training itself is unchanged)",
}

Forward = Callable[[torch.Tensor], torch.Tensor]
DEVICE = torch.device("cpu")  # where the run trains and scores (--device)
EAGER = "SIBEATGAN_CUDA_GRAPHS"  # "0": the loop's eager step on a GPU


# ---------------------------------------------------------------- scoring of one epoch


@torch.no_grad()
def mse_scores(forward: Forward, x: torch.Tensor, batch: int, order=None) -> np.ndarray:
    """Per-beat MSE of `forward` over `x` in batches (in `order` if given), in x's order."""
    idx = torch.arange(len(x)) if order is None else torch.as_tensor(order)
    out = torch.empty(len(x))
    for start in range(0, len(x), batch):
        sel = idx[start : start + batch]
        xb = x[sel].to(DEVICE)
        out[sel] = (forward(xb) - xb).pow(2).flatten(1).mean(1).cpu()
    return out.numpy()


def auc(y: np.ndarray, s: np.ndarray) -> float:
    if not np.all(np.isfinite(s)):
        return float("nan")
    return float(auc_ap(y, s)[0])


def epoch_figures(
    g: torch.nn.Module, call: Forward, sets: dict, rng: np.random.Generator
) -> dict[str, float]:
    """Every scoring mode on a copy of `g` (the training G is never touched)."""
    g = copy.deepcopy(g)
    run = lambda x: call(g, x)  # noqa: E731
    (vx, vy), (tx, ty), bn_x = sets["val"], sets["test"], sets["bn"]
    row = {}
    g.eval()
    val_eval = mse_scores(run, vx, SCORE_BATCH)
    row["val_auc_eval"] = auc(vy, val_eval)
    row["val_recon_n"] = float(val_eval[vy == 0].mean())
    row["test_auc_eval"] = auc(ty, mse_scores(run, tx, SCORE_BATCH))
    g.train()
    row["test_auc_train"] = auc(ty, mse_scores(run, tx, OFFICIAL_BATCH, rng.permutation(len(tx))))
    # the official validate: train mode, shuffled batches of 64; its running statistics stay
    row["val_auc_train"] = auc(vy, mse_scores(run, vx, OFFICIAL_BATCH, rng.permutation(len(vx))))
    g.eval()
    row["test_auc_official"] = auc(ty, mse_scores(run, tx, SCORE_BATCH))
    recompute_bn(g, call, bn_x)
    row["val_auc_bn"] = auc(vy, mse_scores(run, vx, SCORE_BATCH))
    row["test_auc_bn"] = auc(ty, mse_scores(run, tx, SCORE_BATCH))
    recompute_bn(g, call, vx[torch.from_numpy(vy == 0)])
    row["val_auc_valn"] = auc(vy, mse_scores(run, vx, SCORE_BATCH))
    row["test_auc_valn"] = auc(ty, mse_scores(run, tx, SCORE_BATCH))
    recompute_bn(g, call, tx)
    row["test_auc_selfbn"] = auc(ty, mse_scores(run, tx, SCORE_BATCH))
    return row


def recompute_bn(g: torch.nn.Module, call: Forward, x: torch.Tensor) -> None:
    """Set g's BatchNorm running statistics to their averages over `x` (then eval mode)."""
    loader = DataLoader(TensorDataset(x), batch_size=OFFICIAL_BATCH)
    update_bn(loader, _Unpack(g, call), device=DEVICE)
    g.eval()


class _Unpack(torch.nn.Module):
    """A module update_bn can run: `call(g, x)` on one tensor batch."""

    def __init__(self, g: torch.nn.Module, call):
        super().__init__()
        self.g, self.call = g, call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call(self.g, x)


def loss_figures(steps: list[dict[str, float]], resets: int) -> dict[str, float]:
    row: dict[str, float] = {"d_resets": resets}
    for key in ("d", "g", "rec", "adv"):
        values = np.array([s[key] for s in steps])
        for q in (10, 50, 90):
            row[f"{key}_q{q}"] = float(np.percentile(values, q))
    return row


# ---------------------------------------------------------------- data and output


def fold_sets(p, seed: int, limit: int = 0) -> dict:
    """Train, val and test beats of the prepared fold (the first `limit` of each: a smoke test)."""
    data = load_data(p)
    if data.meta.get("key") != prepared_key(p):
        raise SystemExit(f"{p.runtime.prepared_dir} was prepared with other params: preprocess")
    nc = p.data.channels
    cut = slice(None, limit or None)
    train_x, _ = data.part(TRAIN, nc)
    val_x, val_cls = (a[cut] for a in data.part(VAL, nc))
    test_x, test_cls = (a[cut] for a in data.part(TEST, nc))
    train_x = train_x[cut]
    pick = np.random.default_rng([seed, 11]).choice(
        len(train_x), min(BN_BEATS, len(train_x)), replace=False
    )
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return {
        "train": train_x,
        "val": (t(val_x), (val_cls > 0).astype(int)),
        "test": (t(test_x), (test_cls > 0).astype(int)),
        "bn": t(train_x[np.sort(pick)]),
    }


class Rows:
    """OUT/NAME.csv, rewritten after every epoch with every row so far (resumed runs too)."""

    def __init__(self, name: str, out: Path, start: dict):
        self.path = out / f"{name}.csv"
        self.rows: list[dict] = []
        if self.path.exists():
            names = self.path.read_text().splitlines()[0].split(",")
            data = np.atleast_1d(np.genfromtxt(self.path, delimiter=",", names=True))
            self.rows = [{k: float(r[k]) for k in names} for r in data]
        self.info_path = out / f"{name}.json"
        self.start = start

    def add(self, row: dict) -> None:
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        write_csv(self.path, {k: [r.get(k, float("nan")) for r in self.rows] for k in row})
        write_json(self.info_path, {**self.start, "epochs_done": int(row["epoch"])})
        shown = {k: round(row[k], 4) for k in row if "auc" in k}
        print(f"epoch {int(row['epoch'])}: {shown}", flush=True)


# ---------------------------------------------------------------- our loop


def apply_switches(switches: list[str]) -> None:
    """Move the named behaviours of our loop to the official's (monkeypatched, probe only)."""
    if "sigmoid_bce" in switches:

        def d_step(d, opt_d, x, x_rec, amp):
            with amp:
                real = torch.sigmoid(d.classify(d.features(x)))
                fake = torch.sigmoid(d.classify(d.features(x_rec.detach())))
                loss_d = F.binary_cross_entropy(
                    real, torch.ones_like(real)
                ) + F.binary_cross_entropy(fake, torch.zeros_like(fake))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            return loss_d.detach()

        loop.d_step = d_step
    if "keep_adam" in switches:
        loop.reset_adam_state = lambda opt: None


def run_ours(args) -> None:
    overrides = [
        "train.ema=0",
        "train.lr_schedule=constant",
        "train.warmup_steps=0",
        "train.batch_size=64",
        "train.lr=0.0001",
        "train.precision=fp32",
        "runtime.log_every=1",
        f"train.epochs={args.epochs}",
        *args.set,
    ]
    p = load_params("params.yaml", overrides)
    torch.set_num_threads(max(p.runtime.threads, 1))
    apply_switches(args.switch)
    # D's re-initialisations, counted where they happen (on a GPU the loop reads the step
    # losses only every runtime.log_every steps, so they cannot be counted from on_step)
    d_resets, reset_adam = [0], loop.reset_adam_state

    def counted_reset(opt) -> None:
        d_resets[-1] += 1
        reset_adam(opt)

    loop.reset_adam_state = counted_reset
    sets = fold_sets(p, p.seed, args.limit)
    start = _start(args, {"overrides": overrides, "switches": args.switch})
    rows = Rows(args.name, args.out, start)
    g, d = build_models(p.data.channels, p.model.nz, p.model.width, p.seed)
    g, d = g.to(DEVICE), d.to(DEVICE)
    if "double_bn" in args.switch:
        for m in g.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = 1 - (1 - m.momentum) ** 2
    state_path = args.work / args.name / "train_state.pt"
    resume = train_state.read(state_path) if state_path.exists() else None
    steps: list[dict[str, float]] = []
    rng = np.random.default_rng([p.seed, 13, len(rows.rows)])
    t_start = time.perf_counter() - (rows.rows[-1]["wall_s"] if rows.rows else 0.0)

    def on_step(step: int, losses: dict[str, float]) -> None:
        steps.append({k.removeprefix("loss_"): v for k, v in losses.items()})

    def monitor(models) -> dict[str, float]:
        return epoch_figures(models.g, lambda m, x: m(x), sets, rng)

    def on_epoch(row: dict) -> None:
        resets = d_resets.pop()
        d_resets.append(0)
        out = {"epoch": row["epoch"], "epoch_time_s": row["epoch_time_s"]}
        ends = ("_eval", "_train", "_official", "_bn", "_valn", "_selfbn")
        out |= {k: row[k] for k in row if k.endswith(ends)}
        out |= {"val_recon_n": row["val_recon_n"], **loss_figures(steps, resets)}
        out["wall_s"] = time.perf_counter() - t_start
        assert abs(out["val_auc_eval"] - row["val_auc"]) < 1e-6, "scoring modes disagree"
        rows.add(out)
        steps.clear()

    val_x, val_y = sets["val"]
    loop.fit(
        loop.Nets(g, d),
        loop.FitData(sets["train"], val_x.numpy(), val_y),
        p.train,
        p.seed,
        hooks=loop.Hooks(on_step, on_epoch, monitor, p.runtime.log_every, args.name),
        checkpoint=loop.Checkpoint(state_path, {"name": args.name}, resume),
    )
    write_json(rows.info_path, {**start, "epochs_done": args.epochs, "finished": True})


# ---------------------------------------------------------------- the official loop


def official_model(code: Path, opt: SimpleNamespace, loaders: dict, device):
    sys.path.insert(0, str(code))
    sys.path.insert(0, str(code.parent))
    return importlib.import_module("model").BeatGAN(opt, loaders, device)


def run_official(args) -> None:
    torch.set_num_threads(args.threads)
    p = load_params("params.yaml", list(args.set))
    sets = fold_sets(p, args.seed, args.limit)
    device = DEVICE
    work = args.work / args.name
    opt = SimpleNamespace(
        nc=p.data.channels, nz=50, ndf=32, ngf=32, isize=320, ngpu=1, batchsize=OFFICIAL_BATCH,
        niter=args.epochs, lr=1e-4, beta1=0.5, w_adv=1.0, istest=False, outf=str(work / "out"),
        model="beatgan", dataset="ecg", print_freq=10**9,
    )  # fmt: skip
    train_x = torch.from_numpy(sets["train"])
    val_x, val_y = sets["val"]
    loaders = {
        "train": DataLoader(
            TensorDataset(train_x, torch.zeros(len(train_x), dtype=torch.long)),
            batch_size=OFFICIAL_BATCH,
            shuffle=True,
            drop_last=True,
        ),
        "val": DataLoader(
            TensorDataset(val_x, torch.from_numpy(val_y)), batch_size=OFFICIAL_BATCH, shuffle=True
        ),
    }
    torch.manual_seed(args.seed)
    model = official_model(args.code, opt, loaders, device)
    # its labels are ints: torch >= 1.5's torch.full makes them int64, which BCELoss refuses
    model.real_label, model.fake_label = 1.0, 0.0
    model.train_hist = {"D_loss": [], "G_loss": [], "per_epoch_time": [], "total_time": []}
    steps: list[dict[str, float]] = []
    resets = [0]
    optimize, reinit = model.optimize, model.reinitialize_netd

    def counted_optimize():
        optimize()
        e = model.get_errors()
        steps.append(
            {"d": e["err_d"], "g": e["err_g"], "rec": e["err_g_rec"], "adv": e["err_g_adv"]}
        )

    def counted_reinit():
        resets[0] += 1
        reinit()

    model.optimize, model.reinitialize_netd = counted_optimize, counted_reinit
    state_path = work / "official_state.pt"
    start = _start(args, {"seed": args.seed, "code": "official BeatGAN, experiments/ecg"})
    rows = Rows(args.name, args.out, start)
    rng = np.random.default_rng([args.seed, 13, 0])
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)
        for name in ("G", "D", "optimizerG", "optimizerD"):
            getattr(model, name).load_state_dict(st[name])
        torch.set_rng_state(st["torch_rng"])
        rng.bit_generator.state = json.loads(st["numpy_rng"])
        model.cur_epoch, model.total_steps = int(st["epoch"]), int(st["total_steps"])
        print(f"{args.name}: resuming after epoch {model.cur_epoch}", flush=True)
    t_start = time.perf_counter() - (rows.rows[-1]["wall_s"] if rows.rows else 0.0)
    call = lambda m, x: m(x)[0]  # noqa: E731
    while model.cur_epoch < args.epochs:
        t0 = time.perf_counter()
        model.cur_epoch += 1
        model.train_epoch()
        epoch_time = time.perf_counter() - t0
        figures = epoch_figures(model.G, call, sets, rng)
        # the official `validate` is `val_auc_train` here: its own `predict` fails on a last
        # partial batch under torch 2 (`.data.resize_` no longer resizes the tensor it aliases);
        # skipping it changes no training step (train-mode G, batch statistics)
        row = {"epoch": model.cur_epoch, "epoch_time_s": epoch_time, **figures}
        row |= loss_figures(steps, resets[0])
        row["wall_s"] = time.perf_counter() - t_start
        steps.clear()
        resets[0] = 0
        state = {n: getattr(model, n).state_dict() for n in ("G", "D", "optimizerG", "optimizerD")}
        state |= {"torch_rng": torch.get_rng_state(), "epoch": model.cur_epoch}
        state |= {"total_steps": model.total_steps}
        state["numpy_rng"] = json.dumps(rng.bit_generator.state)
        with atomic_path(state_path) as tmp:
            torch.save(state, tmp)
        rows.add(row)
    write_json(rows.info_path, {**start, "epochs_done": args.epochs, "finished": True})


# ---------------------------------------------------------------- report


def read_rows(path: Path) -> np.ndarray:
    return np.atleast_1d(np.genfromtxt(path, delimiter=",", names=True))


def decile_table(out: Path) -> str:
    """Per run: the mean of each scoring mode over blocks of 10 epochs, and the best
    val-selected test AUC so far (markdown)."""
    lines = [
        "| run | epochs | block | val eval | test eval | val train | test official "
        "| test bn | rec q50 | adv q50 | D resets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(out.glob("*.csv")):
        rows = read_rows(path)
        for lo in range(0, len(rows), 10):
            b = rows[lo : lo + 10]
            cells = [f"{b[k].mean():.4f}" for k in ("val_auc_eval", "test_auc_eval")]
            cells += [f"{b[k].mean():.4f}" for k in ("val_auc_train", "test_auc_official")]
            cells += [f"{b['test_auc_bn'].mean():.4f}", f"{b['rec_q50'].mean():.4f}"]
            cells += [f"{b['adv_q50'].mean():.3f}", f"{int(b['d_resets'].sum())}"]
            span = f"{int(b['epoch'][0])}-{int(b['epoch'][-1])}"
            lines.append(f"| {path.stem} | {len(rows)} | {span} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SELECTIONS = (  # (label, the val column that picks the epoch, the test column then read)
    ("eval mode, running statistics (ours)", "val_auc_eval", "test_auc_eval"),
    ("the official's: train-mode val, test after a val pass", "val_auc_train", "test_auc_official"),
    ("statistics recomputed on train beats", "val_auc_bn", "test_auc_bn"),
    ("statistics recomputed on val N beats", "val_auc_valn", "test_auc_valn"),
)


def selection_table(out: Path) -> str:
    """Per run and scoring mode: the epoch the val figure picks and the test AUC it then reads
    (markdown); a mode a run did not record is left out."""
    lines = ["| run | epochs | scoring and selection | picked epoch | val | test |"]
    lines.append("|---|---|---|---|---|---|")
    for path in sorted(out.glob("*.csv")):
        rows = read_rows(path)
        for label, val, test in SELECTIONS:
            if val not in rows.dtype.names or not np.isfinite(rows[val]).any():
                continue
            i = int(np.nanargmax(rows[val]))
            lines.append(
                f"| {path.stem} | {len(rows)} | {label} | {int(rows['epoch'][i])} "
                f"| {rows[val][i]:.4f} | {rows[test][i]:.4f} |"
            )
    return "\n".join(lines)


def plot(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("test_auc_eval", "val_auc_train", "rec_q50", "adv_q50")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    for path in sorted(out.glob("*.csv")):
        rows = read_rows(path)
        for ax, key in zip(axes, keys, strict=True):
            ax.plot(rows["epoch"], rows[key], "o-", ms=2.5, lw=1, label=path.stem)
    for ax, key in zip(axes, keys, strict=True):
        ax.set(xlabel="epoch", title=key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    path = out / "curves.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


# ---------------------------------------------------------------- command line


def _start(args, extra: dict) -> dict:
    words = sys.argv[1:]
    if "--code" in words:  # where the official code lies here is nobody's business
        words[words.index("--code") + 1] = "PATH"
    info = {"name": args.name, "loop": args.loop, "command": " ".join(words)}
    info |= {"commit": git_commit(), "threads": torch.get_num_threads(), **extra}
    info["device"] = str(DEVICE) if DEVICE.type == "cpu" else torch.cuda.get_device_name(DEVICE)
    old = args.out / f"{args.name}.json"
    return {**(read_json(old) if old.exists() else {}), **info, "finished": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loop", choices=("ours", "official", "report"))
    ap.add_argument("name")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("-S", "--set", action="append", default=[], help="params override")
    ap.add_argument("--switch", action="append", default=[], choices=sorted(SWITCHES))
    ap.add_argument("--code", type=Path, help="the official experiments/ecg folder")
    ap.add_argument("--seed", type=int, default=0, help="official loop: torch's seed")
    ap.add_argument("--threads", type=int, default=1, help="official loop: torch threads")
    ap.add_argument("--limit", type=int, default=0, help="only the first N beats of each part")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--device", default="cpu", help="where to train and score (cpu, cuda)")
    if sys.argv[1:2] == ["report"]:
        print(decile_table(OUT))
        print()
        print(selection_table(OUT))
        print(plot(OUT))
        return
    args = ap.parse_args()
    if args.loop == "official" and args.code is None:
        ap.error("official needs --code (the official experiments/ecg folder)")
    global DEVICE
    DEVICE = torch.device(args.device)
    try:
        (run_ours if args.loop == "ours" else run_official)(args)
    except RuntimeError as e:  # a failed CUDA-graph capture: again eagerly, in a fresh process
        if args.loop != "ours" or DEVICE.type != "cuda" or os.environ.get(EAGER) == "0":
            raise
        print(f"{args.name}: the graphed step failed ({e}); starting again eagerly", flush=True)
        os.environ[EAGER] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])


if __name__ == "__main__":
    main()
