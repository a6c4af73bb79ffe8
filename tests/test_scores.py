"""The table of anomaly scores and record-adaptive scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sibeatgan.data.rhythm import BeatContext, beat_rhythm
from sibeatgan.evaluation import scores
from sibeatgan.evaluation.scoring import score
from sibeatgan.models import build_models


@pytest.fixture(scope="module")
def models():
    g, d = build_models(1, 8, 4, seed=0)
    return scores.Models(g, d)


@pytest.fixture(scope="module")
def beats():
    return torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (40, 1, 320)).astype("f4"))


RECORDS = np.repeat([100, 200], 20)


@pytest.fixture(scope="module")
def timing():
    """The 40 beats as two records of 20, every third beat 30% early."""
    rr = np.where(np.arange(40) % 3 == 0, 210.0, 300.0)
    return beat_rhythm(RECORDS, np.cumsum(rr))


@pytest.fixture(scope="module")
def context(timing):
    return BeatContext(RECORDS, timing)


def part_context(timing: np.ndarray, which: slice) -> BeatContext:
    return BeatContext(RECORDS[which], timing[which])


def test_mse_is_the_published_score(models, beats):
    s, heat = scores.beat_scores("mse", models, beats, batch_size=16)
    np.testing.assert_allclose(s, score(models.g, beats), rtol=1e-6)
    np.testing.assert_allclose(heat.mean(1), s, rtol=1e-6)
    assert heat.shape == (40, 320)


@pytest.mark.parametrize("name", sorted(scores.SCORES))
def test_every_score_is_finite_per_beat_and_leaves_modes_alone(models, beats, context, name):
    models.g.train()
    parts = scores.score_parts(name, models, beats, batch_size=16, context=context)
    params = scores.fit(name, parts, np.arange(40) % 2)
    s = scores.combine(name, parts, params)
    assert s.shape == (40,) and np.isfinite(s).all()
    assert models.g.training and models.d.training


def test_the_latent_score_compares_the_codes_of_x_and_g_x(models, beats):
    s, _ = scores.beat_scores("latent", models, beats)
    g = models.g.eval()
    with torch.no_grad():
        z, z_rec = g.encoder(g.layers.enter(beats)), g.encoder(g.layers.enter(g(beats)))
    np.testing.assert_allclose(s, (z - z_rec).pow(2).flatten(1).mean(1), rtol=1e-5)
    g.train()


def test_an_unknown_score_lists_the_known_ones():
    with pytest.raises(scores.ScoreError, match="unknown anomaly score 'msee'; known: mse, "):
        scores.score_def("msee")


def test_a_score_that_needs_d_says_so_without_d(models, beats):
    with pytest.raises(scores.ScoreError, match="needs D's weights"):
        scores.beat_scores("mse_dfeat", scores.Models(models.g), beats)


def test_missing_or_non_finite_parameters_are_refused(models, beats):
    parts = scores.score_parts("mse_dfeat", models, beats)
    with pytest.raises(scores.ScoreError, match="lacks its parameters"):
        scores.combine("mse_dfeat", parts, {})
    bad = {"weight": float("nan"), "scale_mse": 1.0, "scale_dfeat": 1.0}
    with pytest.raises(scores.ScoreError, match="not finite"):
        scores.combine("mse_dfeat", parts, bad)


def test_the_mix_takes_the_weight_with_the_best_val_auc():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 200)
    parts = {
        "mse": rng.uniform(0, 1, 400).astype("f4"),  # no signal
        "dfeat": (0.5 * labels + rng.uniform(0, 1, 400)).astype("f4"),  # separates, noisily
    }
    params = scores.fit("mse_dfeat", parts, labels)
    assert params["weight"] == 1.0
    parts["mse"], parts["dfeat"] = parts["dfeat"] * 3, parts["mse"]
    assert scores.fit("mse_dfeat", parts, labels)["weight"] == 0.0


def test_a_new_score_plugs_in_through_the_table_alone(models, beats, monkeypatch):
    def peak_parts(m, x):
        _, heat = scores.reconstruction(m, x)
        return {"peak": heat.max(1).values, "heat": heat}

    entry = scores.Score("largest per-tick error", peak_parts, scores.single("peak"))
    monkeypatch.setitem(scores.SCORES, "peak", entry)
    s, heat = scores.beat_scores("peak", models, beats)
    np.testing.assert_allclose(s, heat.max(1))


def test_record_adaptive_scores_are_robust_z_scores_per_record():
    s = np.array([1.0, 2.0, 3.0, 100.0, 10.0, 10.0, 10.0, 11.0])
    rec = np.array(["a"] * 4 + ["b"] * 4)
    z = scores.record_adaptive(s, rec)
    # record a: median 2.5, MAD 1.0; record b: median 10, MAD 0 -> its median's millionth
    np.testing.assert_allclose(z[:4], (s[:4] - 2.5) / 1.4826, rtol=1e-6)
    assert z[7] > 1e4 and z[4] == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(1e-4, 1.0), min_size=3, max_size=40),
    st.floats(1e-3, 1e3),
    st.floats(-10, 10),
)
def test_record_adaptive_scores_ignore_a_records_scale_and_offset(values, scale, shift):
    s = np.array(values)
    rec = np.zeros(len(s), dtype=int)
    z = scores.record_adaptive(s, rec)
    z2 = scores.record_adaptive(s * scale + shift, rec)
    assert np.isfinite(z).all()
    if np.median(np.abs(s - np.median(s))) > 1e-6:
        np.testing.assert_allclose(z, z2, rtol=1e-3, atol=1e-3)


def test_record_adaptive_needs_one_record_name_per_score():
    with pytest.raises(scores.ScoreError, match="3 scores but 2 record names"):
        scores.record_adaptive(np.ones(3), np.zeros(2))


def test_the_score_table_compares_every_score_per_beat_and_record_adaptive(models, beats):
    from sibeatgan.evaluation.metrics import auc_ap

    labels = np.arange(40) % 3 == 0
    records = np.repeat([100, 200], 20)
    val = scores.Scored(beats[:40:2], labels[::2].astype(int), records[::2])
    test = scores.Scored(beats[1::2], labels[1::2].astype(int), records[1::2])
    rows = scores.score_table(models, val, test, batch_size=8)
    untimed = [n for n, s in scores.SCORES.items() if not s.reads_context]
    assert [(r["score"], r["record_adaptive"]) for r in rows] == [
        (name, adaptive) for name in untimed for adaptive in (False, True)
    ]
    mse = scores.beat_scores("mse", models, test.x)[0]
    assert rows[0]["test_auc"] == pytest.approx(auc_ap(test.labels, mse)[0])
    z = scores.record_adaptive(mse, test.records)
    assert rows[1]["test_auc"] == pytest.approx(auc_ap(test.labels, z)[0])
    assert rows[-1]["params"].keys() == {"weight", "scale_mse", "scale_dfeat"}
    g_only = scores.score_table(scores.Models(models.g), val, test, batch_size=8)
    assert {r["score"] for r in g_only} == set(scores.g_only_scores()) & set(untimed)


def test_beats_in_context_add_the_scores_of_context_to_the_table(models, beats, timing):
    labels = (np.arange(40) % 3 == 0).astype(int)
    val_at, test_at = slice(0, 40, 2), slice(1, 40, 2)
    val = scores.Scored(
        beats[val_at], labels[val_at], RECORDS[val_at], part_context(timing, val_at)
    )
    test = scores.Scored(
        beats[test_at], labels[test_at], RECORDS[test_at], part_context(timing, test_at)
    )
    rows = {(r["score"], r["record_adaptive"]): r for r in scores.score_table(models, val, test, 8)}
    assert rows.keys() == {(n, a) for n in scores.SCORES for a in (False, True)}
    for name in ("mse_rhythm", "mse_z_rhythm"):
        rhythm = rows[(name, False)]
        # the abnormal beats are the early ones: timing separates them whatever G does
        assert rhythm["val_auc"] == pytest.approx(1.0) and rhythm["test_auc"] == pytest.approx(1.0)
        assert rhythm["params"]["w_prematurity"] < 0  # earlier (a smaller ratio) scores higher
    assert rows[("mse", False)]["test_auc"] < 0.9


@pytest.mark.parametrize("name", ["mse_rhythm", "mse_z_rhythm"])
def test_a_score_of_beat_context_without_it_says_what_it_needs(models, beats, timing, name):
    with pytest.raises(scores.ScoreError, match="R-peak samples.*per-beat score: mse") as err:
        scores.score_parts(name, models, beats)
    assert "\n" not in str(err.value)
    with pytest.raises(scores.ScoreError, match="the context of 20 beats for 40 beats"):
        scores.score_parts(name, models, beats, context=part_context(timing, slice(0, 20)))


def test_the_rhythm_mixes_are_signed_linear_mixes(models, beats, context):
    parts = scores.score_parts("mse_z_rhythm", models, beats, context=context)
    log_p, log_q = np.log(parts["prematurity"]), np.log(parts["pause"])
    params = {"w_mse": 2.0, "w_prematurity": -1.5, "w_pause": 0.5}
    got = scores.combine("mse_rhythm", parts, params)
    np.testing.assert_allclose(got, 2 * np.log(parts["mse"]) - 1.5 * log_p + 0.5 * log_q, rtol=1e-5)
    # mse_z: the beat's mse as a robust z among the beats of its own record
    z = np.concatenate([scores.robust_z(parts["mse"][np.equal(RECORDS, r)]) for r in (100, 200)])
    np.testing.assert_allclose(parts["mse_z"], z, rtol=1e-6)
    params = {"w_mse_z": 0.7, "w_prematurity": -1.5, "w_pause": 0.5}
    got = scores.combine("mse_z_rhythm", parts, params)
    np.testing.assert_allclose(got, 0.7 * z - 1.5 * log_p + 0.5 * log_q, rtol=1e-5, atol=1e-6)
    assert scores.SCORES["mse_rhythm"].signed and not scores.SCORES["mse"].signed
    assert scores.SCORES["mse_z_rhythm"].reads_record
    assert not scores.SCORES["mse_rhythm"].reads_record
    with pytest.raises(scores.ScoreError, match="both classes"):
        scores.fit("mse_rhythm", parts, np.zeros(40, int))
