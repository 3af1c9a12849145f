"""Pair sampling for fine-tuning: the recipe's 50/25/25 proportions, pair semantics, caps, seeds, identity-disjointness."""
from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest

from curation.training.pairs import DIFFERENT, OWN_FAKE, SAME, make_pairs, split_identities


def _table(real_counts: dict[str, int], fake_counts: dict[str, int]) -> pd.DataFrame:
    rows = []
    for name, n in real_counts.items():
        rows += [(name, 0)] * n
    for name, n in fake_counts.items():
        rows += [(name, 1)] * n
    t = pd.DataFrame(rows, columns=["identity", "is_fake"])
    t.index = t.index * 7 + 3  # row labels that are not positions, to prove the pairs refer to labels
    return t


def _check_semantics(t: pd.DataFrame, pairs) -> None:
    ia, ib = t.loc[pairs.a, "identity"].to_numpy(), t.loc[pairs.b, "identity"].to_numpy()
    fa, fb = t.loc[pairs.a, "is_fake"].to_numpy(), t.loc[pairs.b, "is_fake"].to_numpy()
    assert not fa.any(), "the anchor of every pair is a real photo"
    same, diff, fake = pairs.kind == SAME, pairs.kind == DIFFERENT, pairs.kind == OWN_FAKE
    assert (ia[same] == ib[same]).all() and not fb[same].any() and (pairs.a[same] != pairs.b[same]).all()
    assert (ia[diff] != ib[diff]).all() and not fb[diff].any()
    assert (ia[fake] == ib[fake]).all() and fb[fake].all()
    assert (pairs.label == same).all()


def test_proportions_are_50_25_25_and_every_pair_means_what_its_kind_says():
    rng = np.random.default_rng(5)
    reals = {f"id{i:03d}": int(rng.integers(2, 15)) for i in range(60)}
    t = _table(reals, {name: 4 for name in reals})
    pairs, stats = make_pairs(t, seed=1)
    ks = [comb(n, 2) for n in reals.values()]
    # Hand count: all C(n,2) positives; negatives split k - k//2 other-identity, k//2 own-deepfake.
    assert pairs.counts() == {
        "same": sum(ks),
        "different": sum(k - k // 2 for k in ks),
        "own_fake": sum(k // 2 for k in ks),
    }
    shares = np.array(list(pairs.counts().values())) / len(pairs)
    assert np.allclose(shares, [0.5, 0.25, 0.25], atol=0.005)
    assert stats.identities_without_fakes == 0 and stats.identities_with_pairs == 60
    _check_semantics(t, pairs)
    # All C(n,2) real-real pairs of an identity, each once.
    name = "id007"
    same = pairs.kind == SAME
    mine = t.loc[pairs.a[same], "identity"].to_numpy() == name
    got = {tuple(sorted(p)) for p in zip(pairs.a[same][mine], pairs.b[same][mine])}
    assert len(got) == comb(reals[name], 2) == mine.sum()


def test_identities_without_fakes_give_their_budget_to_other_identity_negatives():
    t = _table({"a": 5, "b": 4, "c": 3, "d": 1}, {"a": 2, "d": 3})
    pairs, stats = make_pairs(t, seed=0)
    # a: k=10 -> 5 different + 5 own_fake; b: k=6 -> 6 different; c: k=3 -> 3 different; d: one photo, no pairs.
    assert pairs.counts() == {"same": 19, "different": 14, "own_fake": 5}
    assert stats.identities_without_fakes == 2  # b and c (d anchors nothing, so it is not counted)
    assert stats.identities_with_pairs == 3 and stats.identities == 4
    _check_semantics(t, pairs)
    # d's lone real photo still serves as somebody else's different-person negative (over a few seeds).
    seen = set()
    for seed in range(10):
        p, _ = make_pairs(t, seed=seed)
        seen |= set(t.loc[p.b[p.kind == DIFFERENT], "identity"])
    assert "d" in seen
    # Own deepfakes are used in turn before any repeats: a's 5 own-fake pairs use its 2 fakes 3 and 2 times.
    uses = pd.Series(pairs.b[pairs.kind == OWN_FAKE]).value_counts()
    assert sorted(uses) == [2, 3]
    assert "2 identities had no deepfake" in stats.describe()


def test_cap_limits_positives_per_identity_and_keeps_the_proportions():
    t = _table({"big": 40, "small": 4}, {"big": 3, "small": 3})
    pairs, stats = make_pairs(t, seed=0, max_pos_per_identity=50)
    anchor = t.loc[pairs.a, "identity"].to_numpy()
    same = pairs.kind == SAME
    assert (same & (anchor == "big")).sum() == 50 and (same & (anchor == "small")).sum() == 6
    assert stats.identities_capped == 1
    assert pairs.counts() == {"same": 56, "different": 25 + 3, "own_fake": 25 + 3}
    big = {tuple(sorted(p)) for p in zip(pairs.a[same & (anchor == "big")], pairs.b[same & (anchor == "big")])}
    assert len(big) == 50  # a subset without repeats
    _check_semantics(t, pairs)
    with pytest.raises(ValueError, match="at least 1"):
        make_pairs(t, max_pos_per_identity=0)


def test_pairs_depend_on_the_seed_only_not_on_row_order():
    t = _table({f"p{i}": 3 + i % 5 for i in range(20)}, {f"p{i}": 2 for i in range(0, 20, 2)})
    p1, _ = make_pairs(t, seed=(3, 0))
    p2, _ = make_pairs(t.sample(frac=1.0, random_state=1), seed=(3, 0))
    assert np.array_equal(p1.a, p2.a) and np.array_equal(p1.b, p2.b) and np.array_equal(p1.kind, p2.kind)
    p3, _ = make_pairs(t, seed=(3, 1))  # next epoch: same counts, new draw and order
    assert p3.counts() == p1.counts() and not np.array_equal(p1.a, p3.a)


def test_split_is_identity_disjoint_seeded_and_95_5():
    names = [f"person_{i:04d}" for i in range(400)]
    train, val = split_identities(names * 3, val_fraction=0.05, seed=7)  # repeated names: one per photo
    assert len(val) == 20 and len(train) == 380
    assert not set(train) & set(val) and set(train) | set(val) == set(names)
    assert (train, val) == split_identities(list(reversed(names)), val_fraction=0.05, seed=7)
    assert val != split_identities(names, val_fraction=0.05, seed=8)[1]
    # A small set still gets validation identities (two, so there are different-person pairs), never all of them.
    assert [len(x) for x in split_identities(["a", "b", "c"], 0.05, 0)] == [2, 1]
    assert [len(x) for x in split_identities(["a", "b", "c", "d"], 0.05, 0)] == [2, 2]
    # Pairs drawn within each split never cross it.
    t = _table({n: 4 for n in names[:60]}, {n: 2 for n in names[:60]})
    tr, va = split_identities(t["identity"], 0.1, seed=0)
    for ids in (tr, va):
        p, _ = make_pairs(t[t["identity"].isin(ids)], seed=0)
        assert set(t.loc[p.a, "identity"]) | set(t.loc[p.b, "identity"]) <= set(ids)
