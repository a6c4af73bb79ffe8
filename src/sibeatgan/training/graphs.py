"""The training step as one CUDA graph: the D step and the G step (forward, backward, Adam)
captured once, then replayed for every batch, so a step costs one launch instead of hundreds of
kernel launches and Python calls (the networks are small: at batch 64 a step is well under a
millisecond of GPU work, and the time goes to launching it).

A graph bakes in shapes, memory and scalars, so: batches are full (the loop drops the last
partial one), learning rates are constant, the optimisers keep their state on the GPU
(`capturable`), nothing in the step reads a value back to the host, and D's reset zeroes Adam's
state in place instead of dropping it. Where this cannot hold (no CUDA device, a per-step
schedule, the ranking term, which reads back which pairs it has, or SIBEATGAN_CUDA_GRAPHS=0)
the eager step runs, and the reason is said once. A capture that fails anyway stops the run
with its reason: a broken capture leaves the GPU's stream and memory pool in a state that
nothing should train on.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

WARMUP_STEPS = 3  # real steps run eagerly on a side stream before capture, as CUDA asks

Step = Callable[[torch.Tensor], dict[str, torch.Tensor]]


OPT_OUT = "SIBEATGAN_CUDA_GRAPHS"  # 0: always the eager step


def graph_blockers(
    device: torch.device, lr_schedule: str, warmup_steps: int, rank: bool = False
) -> list[str]:
    """Why the step cannot be captured (empty: it can)."""
    reasons = []
    if device.type != "cuda":
        reasons.append(f"no CUDA device (training on {device.type})")
    if lr_schedule != "constant" or warmup_steps:
        reasons.append("the learning rate changes per step (a graph bakes it in)")
    if rank:
        reasons.append("the ranking term reads its pairs back to the host")
    if os.environ.get(OPT_OUT) == "0":
        reasons.append(f"{OPT_OUT}=0")
    return reasons


def reset_adam_state(opt: torch.optim.Optimizer) -> None:
    """Adam's state back to its start (step 0, zero moments) in place: the next update is a
    fresh optimiser's, made in the memory a captured graph reads."""
    for state in opt.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                value.zero_()


class GraphedStep:
    """Calls `eager` for the first WARMUP_STEPS batches (on a side stream), then captures it
    on the next batch's shape and replays the capture from then on. The losses it returns are
    the graph's own outputs: the next replay overwrites them, so use them before that."""

    def __init__(self, eager: Step):
        self.eager = eager
        self.warmed = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x: torch.Tensor | None = None
        self.static_losses: dict[str, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.graph is None:
            if self.warmed < WARMUP_STEPS:
                self.warmed += 1
                return self._on_side_stream(x)
            try:
                self._capture(x)
            except RuntimeError as err:
                raise RuntimeError(
                    f"the training step could not be captured as a CUDA graph ({err}); "
                    f"run with {OPT_OUT}=0 to train eagerly"
                ) from err
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_losses

    def _on_side_stream(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            losses = self.eager(x)
        torch.cuda.current_stream().wait_stream(stream)
        return losses

    def _capture(self, x: torch.Tensor) -> None:
        """Record the step on a static copy of `x`; recording runs nothing, the first replay
        trains on this batch."""
        self.static_x = x.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_losses = self.eager(self.static_x)
        self.graph = graph
