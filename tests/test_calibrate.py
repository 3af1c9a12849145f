"""Thresholds from impostor scores (curation.flagging.calibrate) on synthetic score and embedding distributions."""
from __future__ import annotations

import numpy as np
import pytest

from curation.flagging.calibrate import (
    calibrate_threshold,
    core_rows,
    duplicate_threshold,
    hist_quantile,
    impostor_scores,
    threshold_at_fmr,
)
from curation.flagging.noise import synthetic_embeddings


def test_threshold_at_fmr_lets_through_at_most_the_target_share():
    rng = np.random.default_rng(0)
    for loc in (0.0, 0.8):  # AdaFace-like and dlib-like impostor levels: the method must not care
        scores = rng.normal(loc, 0.05, 200_000)
        for fmr in (1e-2, 1e-3):
            t = threshold_at_fmr(scores, fmr)
            assert np.mean(scores >= t) <= fmr
            assert np.mean(scores >= t) >= fmr - 2 / len(scores)
            assert t == pytest.approx(np.quantile(scores, 1 - fmr), abs=2e-3)
    assert threshold_at_fmr(np.array([0.1, 0.2, 0.3]), 1e-3) > 0.3  # fewer pairs than 1/FMR: nothing may pass
    with pytest.raises(ValueError):
        threshold_at_fmr(np.array([0.1]), 0.0)
    with pytest.raises(ValueError):
        threshold_at_fmr(np.array([]), 1e-3)


def test_core_rows_drop_mislabelled_photos():
    emb, given, truth = synthetic_embeddings(200, 10, 64, moved=0.1, seed=1)
    rows = np.arange(len(given))
    core = core_rows(emb, given, rows)
    moved = given != truth
    assert moved[core].mean() < 0.01 < moved.mean()
    assert set(given[core]) == set(given)  # every identity keeps at least one photo


def test_calibration_resists_label_noise_and_same_person_identities():
    emb, given, truth = synthetic_embeddings(60, 10, 64, moved=0.1, seed=2)
    given[given == 1] = 60  # identity 1's photos now sit under a new label: one person, two labels...
    given[np.flatnonzero(truth == 1)[:5]] = 1  # ... split over identities 1 and 60
    rows = np.arange(len(given))
    clean_rows = rows[(given == truth) | (given == 60)]
    # reference: impostor scores over correctly labelled photos of truly different people only
    t_ref = threshold_at_fmr(impostor_scores(emb, truth, rows[given == truth], core_fraction=1.0), 1e-2)
    thr, scores = calibrate_threshold(emb, given, rows, target_fmr=1e-2)
    assert thr.method == "target_fmr" and thr.n_impostor_pairs == len(scores)
    assert thr.value == pytest.approx(t_ref, abs=0.03)
    naive = emb[rows] @ emb[rows].T
    naive = naive[(given[:, None] != given[None, :]) & np.triu(np.ones_like(naive, bool), 1)]
    assert threshold_at_fmr(naive, 1e-2) > thr.value  # what contamination would have done
    assert len(clean_rows) < len(rows)


def test_user_threshold_and_note_for_tiny_data():
    emb, given, _ = synthetic_embeddings(4, 6, 32, moved=0.0, seed=3)
    rows = np.arange(len(given))
    thr, scores = calibrate_threshold(emb, given, rows, override=0.42)
    assert thr.method == "user" and thr.value == 0.42 and "--threshold" in thr.describe()
    assert thr.measured_fmr == pytest.approx(np.mean(scores >= 0.42))
    thr, _ = calibrate_threshold(emb, given, rows, target_fmr=1e-3)
    assert "too few" in thr.note


def test_duplicate_threshold_and_hist_quantile():
    assert duplicate_threshold(0.95, 0.93) == pytest.approx(0.995)
    assert duplicate_threshold(0.5, 0.2) == pytest.approx(0.95)
    assert duplicate_threshold(0.5, 0.97) == 0.97  # never below the edge threshold
    rng = np.random.default_rng(4)
    x = rng.normal(0.3, 0.1, 100_000)
    edges = np.linspace(-1, 1, 401)
    counts = np.histogram(x, edges)[0]
    assert hist_quantile(counts, edges, 0.5) == pytest.approx(np.median(x), abs=0.005)
    assert np.isnan(hist_quantile(np.zeros(400), edges, 0.5))
