"""labels.estimate on a store with known decisions, against a hand computation; the estimate in export's manifest;
the "information" queue order; reviewer throughput.

The store never reads image files here: synthetic FoundImages, one photo per identity (P00..P99), 40 outlier flags
with scores 0.00..0.39 (one band) and 60 minority flags with scores 0.40..0.99 (two bands, cut at their median).
"""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from curation import review as rv
from labels.estimate import band_priorities, band_rates, estimate_precision, wilson, with_bands
from labels.export import export, main as export_main
from labels.store import FoundImage, LabelStore, NewFlag

Z = 1.959963984540054


@pytest.fixture
def store(tmp_path):
    (tmp_path / "data").mkdir()
    s = LabelStore.open(tmp_path / "work")
    s.set_meta(dataset_root=str(tmp_path / "data"))
    s.add_images([FoundImage(f"P{i:02d}/0.jpg", 10, 1, f"P{i:02d}", sha256=f"{i:064x}") for i in range(100)])
    s.replace_flags(
        "clean",
        [NewFlag("outlier", f"P{i:02d}", f"P{i:02d}/0.jpg", score=i / 100) for i in range(40)]
        + [NewFlag("minority", f"P{i:02d}", f"P{i:02d}/0.jpg", score=i / 100) for i in range(40, 100)],
    )
    yield s
    s.close()


def photo(store: LabelStore, i: int) -> int:
    return store.image_ids([f"P{i:02d}/0.jpg"])[f"P{i:02d}/0.jpg"]


def answer(store: LabelStore) -> None:
    """outlier: 8 of 10 answered flags confirmed (6 removed, 2 moved), 2 kept; minority: the 5 lowest scores removed;
    one more removal undone (it answers nothing)."""
    for i in range(6):
        store.decide("remove", reviewer="ana", image_ids=[photo(store, i)])
    store.decide("move", reviewer="bo", image_ids=[photo(store, 6), photo(store, 7)], target_identity="P99")
    store.decide("keep", reviewer="ana", image_ids=[photo(store, 8)])
    store.decide("keep", reviewer="ana", image_ids=[photo(store, 9)])
    for i in range(40, 45):
        store.decide("remove", reviewer="bo", image_ids=[photo(store, i)])
    undone = store.decide("remove", reviewer="ana", image_ids=[photo(store, 30)])
    store.undo(undone, reviewer="ana")


def test_wilson_matches_published_values():
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(5, 5) == pytest.approx((0.5655, 1.0), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_rates_and_precision_against_a_hand_computation(store):
    assert estimate_precision(with_bands(store.flag_answers())).describe() == "no reviewed sample yet"
    answer(store)
    flags = with_bands(store.flag_answers())
    rates = band_rates(flags).set_index(["kind", "band"])
    assert list(rates.index) == [("minority", 0), ("minority", 1), ("outlier", 0)]
    out, low, high = rates.loc[("outlier", 0)], rates.loc[("minority", 0)], rates.loc[("minority", 1)]
    assert (out.n_flags, out.n_open, out.n_answered, out.n_confirmed) == (40, 30, 10, 8)  # the undone one is open
    assert (out.rate, out.rate_low, out.rate_high) == pytest.approx((0.8, 0.4902, 0.9433), abs=1e-4)
    assert (low.score_low, low.score_high, high.score_low) == pytest.approx((0.40, 0.69, 0.70))  # cut at the median
    assert (low.n_answered, low.n_confirmed, low.rate_low) == (5, 5, pytest.approx(0.5655, abs=1e-4))
    assert high.n_answered == 0 and math.isnan(high.rate) and (high.rate_low, high.rate_high) == (0, 1)

    # by hand: a band's variance = c(1-c)/(n+z^2) with c = (k + z^2/2)/(n + z^2) (Agresti-Coull), plus c(1-c)/N for the
    # N open flags themselves; a band nobody answered takes its kind's pooled rate (minority: 5/5) and c = 1/2.
    def ac(k, n):
        c = (k + Z * Z / 2) / (n + Z * Z)
        return c * (1 - c) / (n + Z * Z), c * (1 - c)

    est = estimate_precision(flags)
    parts = [(30, 0.8, *ac(8, 10)), (25, 1.0, *ac(5, 5)), (30, 1.0, *ac(0, 0))]  # (N open, rate, var, c(1-c))
    n = sum(p[0] for p in parts)
    p = sum(N * r for N, r, _, _ in parts) / n
    var = sum((N / n) ** 2 * (v + cc / N) for N, _, v, cc in parts)
    assert (est.n_flags, est.n_reviewed) == (85, 15)
    assert (est.precision, est.low, est.high) == pytest.approx((p, p - Z * math.sqrt(var), min(1, p + Z * math.sqrt(var))))
    assert est.precision == pytest.approx(79 / 85) and est.right == pytest.approx(79)
    per_kind = est.per_kind.set_index("kind")
    outlier_var = ac(8, 10)[0] + ac(8, 10)[1] / 30
    assert per_kind.loc["outlier", "precision"] == pytest.approx(0.8)
    assert per_kind.loc["outlier", "low"] == pytest.approx(0.8 - Z * math.sqrt(outlier_var))
    assert per_kind.loc["minority", "precision"] == pytest.approx(1.0)
    assert est.describe().startswith("estimated precision 92.9% (95% CI ")

    store.undo(store.history(image_id=photo(store, 40))[0].id, reviewer="ana")  # an undo takes the answer back
    assert band_rates(with_bands(store.flag_answers())).set_index(["kind", "band"]).loc[("minority", 0), "n_answered"] == 4


def test_information_order_asks_the_least_certain_band_first(store, tmp_path):
    summary = rv.summarize_report({"thresholds": {"edge": 0.3}})
    first = rv.queue_snapshot(store, summary, order="information").frame
    # nothing answered: both kinds are unknown and come first, the largest band first (outlier: 40 flags in one band)
    assert first.reason.iloc[0] == "outlier band 0" and first.priority.iloc[0] == pytest.approx(1 + 40 / 100)
    answer(store)
    prio = band_priorities(with_bands(store.flag_answers())).set_index(["kind", "band"]).priority
    # by hand, (N/85)^2 c(1-c) (1/(n+z^2) - 1/(n+1+z^2)): the unanswered high minority band gains most
    z2 = Z * Z
    hand = {("minority", 1): (30 / 85) ** 2 * 0.25 * (1 / z2 - 1 / (1 + z2))}
    c = (8 + z2 / 2) / (10 + z2)
    hand[("outlier", 0)] = (30 / 85) ** 2 * c * (1 - c) * (1 / (10 + z2) - 1 / (11 + z2))
    assert prio[("minority", 1)] == pytest.approx(hand[("minority", 1)])
    assert prio[("outlier", 0)] == pytest.approx(hand[("outlier", 0)])
    assert prio.idxmax() == ("minority", 1)
    snap = rv.queue_snapshot(store, summary, order="information")
    flags = store.flags(status="open").set_index("identity")
    heads = snap.frame.identity.iloc[:30].tolist()
    assert all(flags.loc[h, "kind"] == "minority" and flags.loc[h, "score"] >= 0.70 for h in heads)  # that band first
    assert heads != sorted(heads)  # at random within the band (a fair sample), not by name or score
    assert snap.frame.identity.iloc[30:].tolist() != []
    worth = rv.queue_snapshot(store, summary).frame.identity.tolist()
    assert sorted(worth) == sorted(snap.frame.identity) and worth != snap.frame.identity.tolist()


def test_export_states_the_estimate_of_what_it_applies(store, tmp_path, capsys):
    work = store.path.parent
    summary = export(work, tmp_path / "before", fmt="csv", unreviewed="apply", progress=False)
    manifest = json.loads((tmp_path / "before" / "manifest.json").read_text())
    assert manifest["applied_flags_estimate"]["summary"] == "no reviewed sample yet"
    assert manifest["applied_flags_estimate"]["precision"] is None and summary.n_auto == 100
    answer(store)
    assert export_main([str(work), "--out", str(tmp_path / "after"), "--format", "csv", "--unreviewed", "apply"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "after" / "manifest.json").read_text())
    est = estimate_precision(with_bands(store.flag_answers()))  # the 85 open flags are exactly the ones applied
    got = manifest["applied_flags_estimate"]
    assert got["n_flags"] == manifest["counts"]["flags_applied"] == 85 and got["n_reviewed"] == 15
    assert got["precision"] == pytest.approx(est.precision, abs=1e-4)
    assert got["interval"] == pytest.approx([est.low, est.high], abs=1e-4)
    assert f"of the 85 applied: {est.describe()}" in printed
    keep = export(work, tmp_path / "keep", fmt="csv", unreviewed="keep", progress=False)
    assert keep.applied_estimate is None
    assert "applied_flags_estimate" not in json.loads((tmp_path / "keep" / "manifest.json").read_text())


def test_throughput_counts_review_time_without_breaks():
    now = pd.Timestamp("2026-03-04 12:00", tz="UTC").to_pydatetime()
    ts = ["2026-03-03T10:00:00+00:00", "2026-03-03T10:00:30+00:00",  # yesterday: one pause of 30 s
          "2026-03-04T09:00:00+00:00", "2026-03-04T09:00:20+00:00", "2026-03-04T09:00:40+00:00",  # today: 2 x 20 s
          "2026-03-04T11:00:00+00:00"]  # after a break: no pace
    times = pd.DataFrame({"reviewer": ["ana"] * 6 + ["bo"], "ts": ts + ["2026-03-04T11:30:00+00:00"]})
    t = rv.throughput(times, now=now).set_index("reviewer")
    assert t.loc["ana", "decisions_today"] == 4 and t.loc["ana", "decisions"] == 6
    assert t.loc["ana", "per_minute_today"] == pytest.approx(2 / (40 / 60))  # 3 per minute
    assert t.loc["ana", "per_minute"] == pytest.approx(3 / (70 / 60))
    assert t.loc["bo", "decisions"] == 1 and math.isnan(t.loc["bo", "per_minute"])


def test_simulated_reviewer_answers_the_budget_and_writes_nothing(store):
    summary = rv.summarize_report({"thresholds": {"edge": 0.3}})
    flags = store.flags()
    right = (flags.score < 0.9).to_numpy()  # the 10 highest-scoring minority flags are wrong
    version = store.version()
    for order in ("information", "worth", "random"):
        sim = rv.simulate_review(flags, right, summary, budget=30, order=order, seed=1)
        assert sim.n_answered == 30 and sim.estimate.n_flags == 70 and sim.estimate.n_reviewed == 30
        open_right = sim.truth * 70
        assert open_right == pytest.approx(round(open_right))  # a share of the 70 flags left open
    info = rv.simulate_review(flags, right, summary, budget=30, order="information", seed=1)
    assert info.n_identities == 30  # one sample flag per identity opened
    assert store.version() == version and store.history() == []
    with pytest.raises(ValueError, match="order"):
        rv.simulate_review(flags, right, summary, order="alphabetical")
