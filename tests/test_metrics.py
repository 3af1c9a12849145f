"""curation.scoring.metrics against independent, deliberately naive computations.

The references below loop over every candidate threshold, count with Fractions, and re-implement sklearn's roc_curve
as a plain loop (sklearn is not a dependency; the vectorised code was also cross-checked once against sklearn 1.9.1
itself). Scores are rounded to few decimals so that ties are everywhere: ties are where EER code usually goes wrong.
"""
from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from curation.scoring import metrics
from curation.training.pairs import PAIR_KINDS


# ------------------------------------------------------------------------------------------------------- references


def ref_bob_eer(scores, labels):
    """Sweep every distinct score as threshold (ascending); keep the last minimum of |FAR - FRR| (bob's `<=` scan)."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    best = None
    for t in sorted(set(scores)):
        far = Fraction(sum(1 for n in neg if n >= t), len(neg))
        frr = Fraction(sum(1 for p in pos if p < t), len(pos))
        if best is None or abs(far - frr) <= best[0]:
            best = (abs(far - frr), t, far, frr)
    _, t, far, frr = best
    return float((far + frr) / 2), t, float(far), float(frr)


def ref_roc_curve(scores, labels):
    """sklearn.metrics.roc_curve(labels, scores) with its defaults, written as a loop over the sorted pairs."""
    ranked = sorted(zip(scores, labels), key=lambda p: -p[0])
    fps, tps, thr = [], [], []
    tp = fp = 0
    for i, (s, y) in enumerate(ranked):
        tp += y
        fp += 1 - y
        if i == len(ranked) - 1 or ranked[i + 1][0] != s:  # last pair of a run of equal scores
            fps.append(fp)
            tps.append(tp)
            thr.append(s)
    if len(fps) > 2:  # drop_intermediate: keep the ends and every point where either count bends
        keep = [0] + [
            i for i in range(1, len(fps) - 1)
            if fps[i - 1] - 2 * fps[i] + fps[i + 1] != 0 or tps[i - 1] - 2 * tps[i] + tps[i + 1] != 0
        ] + [len(fps) - 1]
        fps, tps, thr = [fps[i] for i in keep], [tps[i] for i in keep], [thr[i] for i in keep]
    fps, tps, thr = [0] + fps, [0] + tps, [math.inf] + thr
    return [f / fps[-1] for f in fps], [t / tps[-1] for t in tps], thr


def ref_roc_eer(scores, labels):
    fpr, tpr, _ = ref_roc_curve(scores, labels)
    fnr = [1 - t for t in tpr]
    gaps = [abs(a - b) for a, b in zip(fnr, fpr)]
    return fnr[gaps.index(min(gaps))]


def ref_tar_at_far(scores, labels, far):
    """Sorted-list TAR@FAR: k = floor(far * n_neg) false accepts allowed, so the threshold must exceed the (k+1)-th
    highest negative; None when k == 0. Returns (tar, lowest accepted score or None)."""
    neg = sorted((s for s, y in zip(scores, labels) if y == 0), reverse=True)
    pos = [s for s, y in zip(scores, labels) if y == 1]
    k = math.floor(Fraction(repr(far)) * len(neg))
    if k == 0:
        return None, None
    if k >= len(neg):
        return 1.0, min(scores)
    bar = neg[k]
    above = [s for s in scores if s > bar]
    return sum(1 for p in pos if p > bar) / len(pos), (min(above) if above else None)


def tied_data(seed: int, n: int, decimals: int, shift: float = 1.0, dtype=np.float64):
    """Scores rounded to `decimals` (heavy ties, negative zeros included). float32 scores take the one-sort path of
    the metrics code, float64 ones (0.1 is no float32) the two-sort path: both must give the reference's numbers."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(0, 0.3, n) + shift * 0.3 * labels, decimals).astype(dtype)
    return scores, labels


CASES = [
    (seed, n, dec, dtype)
    for seed, (n, dec) in enumerate([(2, 2), (5, 1), (30, 1), (200, 2), (400, 2), (400, 1), (150, 0)] * 2)
    for dtype in (np.float32, np.float64)
]


# ------------------------------------------------------------------------------------------------ random, with ties


@pytest.mark.parametrize("seed,n,decimals,dtype", CASES)
def test_bob_eer_matches_threshold_sweep(seed, n, decimals, dtype):
    scores, labels = tied_data(seed, n, decimals, shift=seed % 3, dtype=dtype)
    got = metrics.equal_error_rate(scores, labels)
    eer, t, far, frr = ref_bob_eer(scores.tolist(), labels.tolist())
    assert got.threshold == t
    assert (got.far, got.frr) == (far, frr)
    assert got.eer == pytest.approx(eer, abs=1e-15)


@pytest.mark.parametrize("seed,n,decimals,dtype", CASES)
def test_organisers_roc_curve_and_eer_match_the_sklearn_loop(seed, n, decimals, dtype):
    scores, labels = tied_data(seed, n, decimals, shift=seed % 3, dtype=dtype)
    fpr, tpr, thr = metrics.roc_curve(scores, labels)
    ref_fpr, ref_tpr, ref_thr = ref_roc_curve(scores.tolist(), labels.tolist())
    assert fpr.tolist() == ref_fpr and tpr.tolist() == ref_tpr and thr.tolist() == ref_thr
    assert metrics.roc_eer(scores, labels).eer == ref_roc_eer(scores.tolist(), labels.tolist())


def test_drop_intermediate_changes_the_organisers_eer_and_is_reproduced():
    """The ROC point that sits exactly on fnr == fpr is collinear with its neighbours, so sklearn's default drops it
    and the organisers' EER jumps from 0.5 to 1.0 (bob's stays 0.5)."""
    scores, labels = [0.4, 0.3, 0.2, 0.1], [0, 1, 1, 0]
    fpr, tpr, thr = metrics.roc_curve(scores, labels)
    assert (fpr.tolist(), tpr.tolist(), thr.tolist()) == ([0, 0.5, 0.5, 1], [0, 0, 1, 1], [math.inf, 0.4, 0.2, 0.1])
    assert len(metrics.roc_curve(scores, labels, drop_intermediate=False)[0]) == 5
    assert metrics.roc_eer(scores, labels).eer == 1.0 == ref_roc_eer(scores, labels)
    assert metrics.equal_error_rate(scores, labels).eer == 0.5


@pytest.mark.parametrize("seed,n,decimals,dtype", CASES)
@pytest.mark.parametrize("far", [0.5, 0.29, 0.1, 0.05, 0.01])
def test_tar_at_far_matches_sorted_list(seed, n, decimals, dtype, far):
    scores, labels = tied_data(seed, n, decimals, dtype=dtype)
    got = metrics.tar_at_far(scores, labels, [far])[metrics.far_key(far)]
    tar, threshold = ref_tar_at_far(scores.tolist(), labels.tolist(), far)
    assert got.tar == tar
    if tar is not None:
        assert got.threshold == threshold
        assert got.far <= far
        accepted = scores >= threshold if threshold is not None else np.zeros(len(scores), bool)  # None: accept none
        assert got.n_false_accepts == int((accepted & (labels == 0)).sum())


def test_tar_at_far_below_one_negative_is_none_and_at_exactly_one_is_measured():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(50, int), np.zeros(100, int)]
    scores = rng.normal(size=150) + labels
    res = metrics.tar_at_far(scores, labels, [0.01, 0.001])
    assert res["0.001"].tar is None and res["0.001"].threshold is None  # 0.001 < 1/100
    neg_max = scores[labels == 0].max()
    second = np.sort(scores[labels == 0])[-2]
    assert res["0.01"].n_false_accepts == 1  # exactly one false accept allowed, and used
    assert res["0.01"].tar == np.mean(scores[labels == 1] > second)
    assert res["0.01"].threshold == scores[scores > second].min() <= neg_max


@pytest.mark.parametrize("seed", range(6))
def test_accuracy_and_rates_match_direct_counts(seed):
    scores, labels = tied_data(seed, 300, 1)
    for t in (-0.3, 0.0, 0.2, 0.25):
        expected = sum(int(s >= t) == y for s, y in zip(scores.tolist(), labels.tolist())) / len(scores)
        assert metrics.accuracy_at(scores, labels, t) == pytest.approx(expected, abs=1e-15)


# ---------------------------------------------------------------------------------------------------- hand-made cases


def test_perfect_separation():
    scores, labels = [0.1, 0.2, 0.5, 0.6, 0.7, 0.9], [0, 0, 0, 1, 1, 1]
    r = metrics.verification_report(scores, labels, fars=[0.5])
    assert (r.eer, r.eer_threshold, r.eer_roc, r.accuracy) == (0.0, 0.6, 0.0, 1.0)
    # the operating point is the lowest threshold with FAR <= 0.5: it may spend the one false accept allowed
    assert (r.tar_at_far["0.5"].tar, r.tar_at_far["0.5"].threshold, r.tar_at_far["0.5"].far) == (1.0, 0.5, 1 / 3)


def test_negative_zero_ties_with_zero():
    scores, labels = [-0.0, 0.0, 0.0, -0.0, 0.5], [1, 0, 0, 1, 1]
    for dtype in (np.float32, np.float64):
        fpr, tpr, thr = metrics.roc_curve(np.array(scores, dtype), labels)
        assert (fpr.tolist(), tpr.tolist()) == ([0, 0, 1], [0, 1 / 3, 1])  # one point for the four zeros
        e = metrics.equal_error_rate(np.array(scores, dtype), labels)
        assert (e.threshold, e.far, e.frr) == (0.5, 0.0, 2 / 3)  # at 0.0 all four zeros are accepted: FAR 1


def test_all_scores_tied():
    scores, labels = [0.5] * 6, [0, 1, 0, 1, 1, 0]
    e = metrics.equal_error_rate(scores, labels)
    assert (e.eer, e.threshold, e.far, e.frr) == (0.5, 0.5, 1.0, 0.0)
    # The organisers' variant has only the points (0,0) and (1,1): |fnr - fpr| ties at 1 and the first wins.
    assert metrics.roc_eer(scores, labels).eer == 1.0 == ref_roc_eer(scores, labels)


def test_single_positive():
    scores, labels = [0.5, 0.2, 0.4, 0.6, 0.8], [1, 0, 0, 0, 0]
    e = metrics.equal_error_rate(scores, labels)
    # t = 0.5: FAR 2/4, FRR 0; t = 0.6: FAR 2/4, FRR 1. |FAR - FRR| ties at 0.5 and, as in bob.measure's scan, the
    # higher threshold wins, so the EER is 0.75 rather than 0.25: one positive cannot measure an EER.
    assert (e.threshold, e.far, e.frr, e.eer) == (0.6, 0.5, 1.0, 0.75)
    assert e.eer == ref_bob_eer(scores, labels)[0]
    assert metrics.roc_eer(scores, labels).eer == ref_roc_eer(scores, labels)


def test_inverted_scores():
    scores, labels = [0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]
    e = metrics.equal_error_rate(scores, labels)
    assert (e.eer, e.threshold) == (1.0, 0.8)
    assert metrics.roc_eer(scores, labels).eer == 1.0


def test_per_type_rates_hand_case():
    scores = [0.9, 0.4, 0.2, 0.7, 0.1, 0.6, 0.3, 0.5]
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    types = ["same", "same", "same", "different", "different", "own_fake", "own_fake", "same"]
    r = metrics.error_rates_by_type(scores, labels, types, threshold=0.45)
    assert r["same"].kind == "false_reject" and r["same"].false_rejects == 2 and r["same"].rate == 0.5
    assert r["different"].kind == "false_accept" and r["different"].rate == 0.5
    assert r["own_fake"].false_accepts == 1 and r["own_fake"].rate == 0.5 and r["own_fake"].n == 2
    # integer codes with names give the same rates, keyed by name
    codes = np.array([PAIR_KINDS.index(t) for t in types])
    by_code = metrics.error_rates_by_type(scores, labels, codes, 0.45, type_names=PAIR_KINDS)
    assert {k: v.to_dict() for k, v in by_code.items()} == {k: v.to_dict() for k, v in r.items()}
    mixed = metrics.error_rates_by_type(scores, labels, ["all"] * 8, 0.45)["all"]
    assert mixed.kind == "mixed" and mixed.rate == 4 / 8  # 2 false rejects + 2 false accepts
    # default threshold: the bob EER threshold
    default = metrics.error_rates_by_type(scores, labels, types)
    at_eer = metrics.error_rates_by_type(scores, labels, types, metrics.equal_error_rate(scores, labels).threshold)
    assert default == at_eer


# ------------------------------------------------------------------------------------------------ report and curves


def test_report_agrees_with_the_single_functions_and_is_plain_json():
    scores, labels = tied_data(7, 500, 2)
    types = np.where(labels == 1, "same", np.where(np.arange(500) % 2, "different", "own_fake"))
    r = metrics.verification_report(scores.astype(np.float32), labels, types)
    e = metrics.equal_error_rate(scores.astype(np.float32), labels)
    assert (r.eer, r.eer_threshold) == (e.eer, e.threshold)
    assert r.eer_roc == metrics.roc_eer(scores.astype(np.float32), labels).eer
    assert r.n_pos == labels.sum() and r.n_neg == (labels == 0).sum()
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert set(d["tar_at_far"]) == {"0.01", "0.001", "0.0001"} and d["tar_at_far"]["0.0001"] is None
    assert set(d["per_type"]) == {"same", "different", "own_fake"}
    assert d["curve"]["threshold"][0] is None and metrics.Curve.from_dict(d["curve"]).threshold[0] == np.inf
    given = metrics.verification_report(scores, labels, threshold=0.2, curve=False)
    assert given.threshold_source == "given" and given.curve is None
    assert given.accuracy == metrics.accuracy_at(scores, labels, 0.2)


def test_thinned_curve_lies_on_the_full_curve_and_is_small():
    rng = np.random.default_rng(3)
    labels = (rng.random(200_000) < 0.5).astype(int)
    scores = rng.normal(size=200_000) + 2 * labels
    full = metrics.det_curve(scores, labels, thin=False)
    thin = metrics.det_curve(scores, labels)
    assert len(full.far) == len(np.unique(scores)) + 1
    assert 100 < len(thin.far) < 2500
    idx = np.searchsorted(-full.threshold, -thin.threshold)  # thresholds decrease along the curve
    assert np.array_equal(full.threshold[idx], thin.threshold)
    assert np.array_equal(full.far[idx], thin.far) and np.array_equal(full.frr[idx], thin.frr)
    assert (thin.far[0], thin.frr[0], thin.far[-1], thin.frr[-1]) == (0.0, 1.0, 1.0, 0.0)
    assert np.all(np.diff(thin.far) >= 0) and np.all(np.diff(thin.frr) <= 0)


@pytest.mark.parametrize(
    "scores,labels,message",
    [
        ([0.1, float("nan")], [0, 1], "NaN or infinite"),
        ([0.1, float("inf")], [0, 1], "NaN or infinite"),
        ([0.1, 0.2], [0, 2], "0 or 1"),
        ([0.1, 0.2, 0.3], [0, 1], "differ in length"),
        ([0.1, 0.2], [1, 1], "at least one positive"),
        ([[0.1, 0.2]], [[0, 1]], "1-D"),
        (["a", "b"], [0, 1], "must be numbers"),
    ],
)
def test_bad_input_is_refused_with_the_reason(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        metrics.verification_report(scores, labels)
