"""A beat's timing among its neighbours: how early it comes and how long the pause after it is.

An ectopic beat (S, V) comes early and a V beat is often followed by a compensatory pause; a
beat's shape can look normal while its timing does not. Both are ratios to the beat's local
rhythm (the mean of the RR intervals before it), so they carry from one patient and heart rate
to another, and read no label: only the R-peak samples of the beats of the same recording.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOCAL = 8  # RR intervals before a beat that make its local rhythm
FLOOR = 1e-3  # the smallest ratio kept, so that its log stays finite
COLUMNS = ("prematurity", "pause")


class RhythmError(ValueError):
    """R-peak samples that cannot be beats of a recording; the message names the fix."""


def beat_rhythm(keys: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """[n, 2] float64 of every beat: its RR interval before over its local rhythm
    (prematurity: below 1 when early) and its RR interval after over the same (pause).
    `keys` groups the beats that follow one another (a record, or a stretch of one between
    gaps); a beat without a neighbour on a side reads 1 there (no evidence)."""
    keys, samples = np.asarray(keys), np.asarray(samples)
    if keys.shape != samples.shape or samples.ndim != 1:
        raise RhythmError(f"{samples.shape} R-peak samples for {keys.shape} record keys")
    if samples.size and not np.isfinite(samples.astype(np.float64)).all():
        raise RhythmError("R-peak samples hold NaN or infinite values; give sample numbers")
    out = np.ones((len(samples), 2))
    for key in np.unique(keys):
        idx = np.flatnonzero(keys == key)
        idx = idx[np.argsort(samples[idx], kind="stable")]
        rr = np.diff(samples[idx].astype(np.float64))
        if (rr <= 0).any():
            twice = samples[idx][1:][rr <= 0][0]
            raise RhythmError(f"two beats at R-peak sample {twice}; give each beat once")
        out[idx] = _ratios(rr)
    return out


def _ratios(rr: np.ndarray) -> np.ndarray:
    """Prematurity and pause of the beats between RR intervals `rr` (one record, in order)."""
    n = len(rr) + 1
    out = np.ones((n, 2))
    if n < 3:  # no interval before an interval: no local rhythm to compare with
        return out
    before = np.r_[np.nan, rr]  # before[i]: the interval ending at beat i
    total = np.r_[0.0, np.cumsum(np.r_[0.0, rr])]  # total[i]: sum of before[1..i-1]
    count = np.clip(np.arange(n) - 1, 0, LOCAL)  # intervals before before[i]
    i = np.flatnonzero(count > 0)
    local = (total[i] - total[i - count[i]]) / count[i]
    out[i, 0] = before[i] / local
    after = i[i < n - 1]
    out[after, 1] = rr[after] / local[: len(after)]
    return np.maximum(out, FLOOR)


@dataclass(frozen=True)
class BeatContext:
    """What a score of beat context reads besides the beats themselves: each beat's record
    (to compare it with the other beats of that record) and its `beat_rhythm` timing."""

    records: np.ndarray  # [n] the record of each beat
    timing: np.ndarray  # [n, 2] prematurity and pause

    def __post_init__(self) -> None:
        n = len(self.records)
        if self.timing.shape != (n, len(COLUMNS)) or not np.isfinite(self.timing).all():
            raise RhythmError(f"timing of shape {self.timing.shape} for {n} beats; want [{n}, 2]")

    def __len__(self) -> int:
        return len(self.records)


def one_record(timing: np.ndarray) -> BeatContext:
    """The context of beats that are all of one record."""
    return BeatContext(np.zeros(len(timing), dtype=np.int64), timing)
