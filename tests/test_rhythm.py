"""A beat's timing among its neighbours (data/rhythm.py): what the `mse_rhythm` score reads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sibeatgan.data.rhythm import FLOOR, LOCAL, RhythmError, beat_rhythm


def test_a_premature_beat_comes_early_and_is_followed_by_a_pause():
    samples = np.arange(20) * 300.0  # a steady rhythm, 300 samples a beat
    samples[10] -= 120  # beat 10 comes 120 samples early; the interval after it is longer
    t = beat_rhythm(np.zeros(20), samples)
    assert t[10, 0] == pytest.approx(180 / 300)
    assert t[10, 1] == pytest.approx(420 / 300)
    steady = [i for i in range(2, 9)]
    np.testing.assert_allclose(t[steady], 1.0)


def test_the_local_rhythm_is_the_mean_of_the_intervals_before():
    rr = np.r_[np.full(LOCAL, 200.0), np.full(LOCAL + 2, 400.0)]
    samples = np.r_[0.0, np.cumsum(rr)]
    t = beat_rhythm(np.zeros(len(samples)), samples)
    first_slow = LOCAL + 1  # the first beat after a 400-sample interval
    assert t[first_slow, 0] == pytest.approx(400 / 200)
    assert t[-1, 0] == pytest.approx(1.0)  # LOCAL intervals of 400 before it


def test_records_are_timed_apart_and_beats_need_not_come_in_order():
    a = np.arange(12) * 250.0
    b = np.arange(12) * 400.0 + 7
    keys = np.r_[np.zeros(12), np.ones(12)]
    together = beat_rhythm(keys, np.r_[a, b])
    np.testing.assert_array_equal(together[:12], beat_rhythm(np.zeros(12), a))
    order = np.random.default_rng(0).permutation(24)
    np.testing.assert_array_equal(beat_rhythm(keys[order], np.r_[a, b][order]), together[order])


def test_beats_without_neighbours_read_no_evidence():
    np.testing.assert_array_equal(beat_rhythm(np.zeros(2), np.array([5, 400])), 1.0)
    assert beat_rhythm(np.zeros(0), np.zeros(0)).shape == (0, 2)
    t = beat_rhythm(np.zeros(6), np.arange(6) * 300.0)
    assert t[0].tolist() == [1.0, 1.0] and t[-1, 1] == 1.0


@pytest.mark.parametrize(
    ("keys", "samples", "match"),
    [
        (np.zeros(3), np.array([0, 300, 300]), "two beats at R-peak sample 300"),
        (np.zeros(3), np.array([0, np.nan, 600]), "NaN or infinite"),
        (np.zeros(2), np.array([0, 300, 600]), r"\(3,\) R-peak samples for \(2,\) record keys"),
    ],
)
def test_samples_that_cannot_be_beats_are_refused_in_one_line(keys, samples, match):
    with pytest.raises(RhythmError, match=match) as err:
        beat_rhythm(keys, samples)
    assert "\n" not in str(err.value)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(1, 5000), min_size=0, max_size=60),
    st.lists(st.integers(0, 2), min_size=60, max_size=60),
)
def test_timing_is_finite_positive_and_ignores_the_sampling_rate(rr, keys):
    samples = np.cumsum(np.r_[3, rr]).astype(np.float64)
    keys = np.array(keys[: len(samples)])
    t = beat_rhythm(keys, samples)
    assert t.shape == (len(samples), 2)
    assert np.isfinite(t).all() and (t >= FLOOR).all()
    np.testing.assert_allclose(beat_rhythm(keys, samples * 2.5), t, rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 2000), min_size=0, max_size=40))
def test_timing_matches_its_definition_beat_by_beat(rr):
    samples = np.cumsum(np.r_[0, rr]).astype(np.float64)
    t = beat_rhythm(np.zeros(len(samples)), samples)
    for i in range(len(samples)):
        before = rr[max(i - 1 - LOCAL, 0) : max(i - 1, 0)]  # the intervals before rr[i - 1]
        want = [1.0, 1.0]
        if i >= 2:
            local = np.mean(before)
            want[0] = rr[i - 1] / local
            if i < len(rr):
                want[1] = rr[i] / local
        np.testing.assert_allclose(t[i], np.maximum(want, FLOOR), rtol=1e-9)
