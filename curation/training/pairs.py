"""Verification pairs for fine-tuning: same person, different person, person vs their own deepfake.

Why pairs and not classes: the product's models must say "not the same person" to a deepfake *of* that person, and a
classification loss never sees that case. The reference recipe (`../shared/spec/FORMATS.md`, the MMG team's) builds, per
identity with n real photos, all k = C(n, 2) real-real pairs (label 1), k/2 pairs of one of its real photos with a real
photo of another identity (label 0) and k/2 pairs of one of its real photos with one of its own deepfakes (label 0):
50/25/25. An identity without deepfakes gives its deepfake budget to other-identity negatives, so the positive share
stays at one half. A cap on k per identity keeps a celebrity with 500 photos (125k pairs) from drowning everyone else.

Pairs are drawn from a seed alone, so a training run regenerates the pairs of epoch e from (seed, e) and its whole data
order is (epoch, step): nothing else needs to be saved to resume.

Example:
    >>> train_ids, val_ids = split_identities(labels["identity"], val_fraction=0.05, seed=0)
    >>> pairs, stats = make_pairs(labels[labels["identity"].isin(train_ids)], seed=(0, epoch))
    >>> pairs.a[:3], pairs.b[:3], pairs.label[:3]        # row labels of `labels`, and 1.0 for the same person
    >>> stats.identities_without_fakes                    # how many identities had no deepfake to pair with
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Pair kinds, by code. The label is 1 only for SAME.
SAME, DIFFERENT, OWN_FAKE = 0, 1, 2
PAIR_KINDS: tuple[str, ...] = ("same", "different", "own_fake")


@dataclass(frozen=True)
class Pairs:
    """Parallel arrays: `a[i]`, `b[i]` are row labels of the image table given to `make_pairs`; `kind[i]` a code above.

    `a` is always a real photo of the identity the pair was drawn for; `b` is the other real photo, another identity's
    real photo, or that identity's deepfake.
    """

    a: np.ndarray
    b: np.ndarray
    kind: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def label(self) -> np.ndarray:
        """1.0 for the same real person, 0.0 for both kinds of negative (float32, ready for a BCE loss)."""
        return (self.kind == SAME).astype(np.float32)

    def counts(self) -> dict[str, int]:
        """How many pairs of each kind, by name."""
        found = np.bincount(self.kind, minlength=len(PAIR_KINDS))
        return {name: int(n) for name, n in zip(PAIR_KINDS, found)}


@dataclass(frozen=True)
class PairStats:
    """What a user should hear about the pairs of one split."""

    identities: int  # identities with at least one real photo
    identities_with_pairs: int  # ... and at least two, so they anchor pairs
    identities_without_fakes: int  # anchoring identities whose deepfake budget went to other-identity negatives
    identities_capped: int  # anchoring identities with more than `max_pos_per_identity` real-real pairs
    counts: dict[str, int]

    def describe(self) -> str:
        """One line for the run's log."""
        total = sum(self.counts.values())
        shares = ", ".join(f"{name} {n:,} ({n / max(total, 1):.0%})" for name, n in self.counts.items())
        return (
            f"{total:,} pairs from {self.identities_with_pairs:,} of "
            f"{self.identities:,} identities: {shares}; {self.identities_without_fakes:,} identities had no deepfake "
            f"(their budget went to other-identity negatives); {self.identities_capped:,} capped"
        )


def split_identities(
    identities: Iterable[str], val_fraction: float = 0.05, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Seeded identity-disjoint split: no person is in both the training and the validation pairs.

    Inputs: identity names (repeats are fine, e.g. one per photo), the validation share, a seed.
    Output: (train identities, validation identities), each sorted. The split depends only on the set of names and the
    seed, not on their order. With a positive share, validation gets at least two identities when there are four or
    more (one identity alone gives no different-person pairs), at least one with two or three, and training keeps
    at least one.

    Example:
        >>> split_identities(["ana", "bo", "cy", "di", "ed"], val_fraction=0.2, seed=0)
        (['ana', 'bo', 'di'], ['cy', 'ed'])
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = sorted({str(x) for x in identities})
    n_val = int(round(len(names) * val_fraction))
    if val_fraction > 0 and len(names) >= 2:
        n_val = min(max(n_val, 2 if len(names) >= 4 else 1), len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:n_val])
    train = sorted(names[i] for i in order[n_val:])
    return train, val


def _cycle(rng: np.random.Generator, items: np.ndarray, count: int) -> np.ndarray:
    """`count` draws that go through `items` in shuffled rounds, so every item is used before any repeats."""
    if count <= 0:
        return items[:0]
    rounds = -(-count // len(items))
    return items[np.concatenate([rng.permutation(len(items)) for _ in range(rounds)])[:count]]


def make_pairs(
    table: pd.DataFrame,
    seed: int | Sequence[int] = 0,
    *,
    max_pos_per_identity: int | None = None,
    fake_share: float = 0.25,
    shuffle: bool = True,
) -> tuple[Pairs, PairStats]:
    """Draw the recipe's 50/25/25 pairs from an image table.

    Inputs: `table` with columns `identity` and `is_fake`, one row per usable photo (its index labels are what the pairs
    refer to: pass a subset to pair within one split); a seed (an int or a tuple such as (seed, epoch)); an optional cap
    on real-real pairs per identity (a seeded random subset of them is kept when capped); the share of all pairs that
    are own-deepfake pairs, in [0, 0.5] (same-person pairs stay half, different-person pairs take the rest: the
    recipe's 0.25 gives 50/25/25, 0.5 gives no different-person pairs); whether to shuffle the result.
    Output: (Pairs, PairStats). Identities with a single real photo anchor no pairs but still serve as other-identity
    negatives. Deepfakes whose identity has no real photo are unused.

    Example:
        >>> t = pd.DataFrame({"identity": ["a", "a", "a", "b", "b"], "is_fake": [0, 0, 1, 0, 0]})
        >>> pairs, stats = make_pairs(t, seed=0)
        >>> pairs.counts()
        {'same': 2, 'different': 2, 'own_fake': 0}
        >>> stats.identities_without_fakes          # "b" has no deepfake: its half went to different-person pairs
        1
    """
    if not 0.0 <= fake_share <= 0.5:
        raise ValueError(f"fake_share must be in [0, 0.5], got {fake_share}")
    if max_pos_per_identity is not None and max_pos_per_identity < 1:
        raise ValueError(f"max_pos_per_identity must be at least 1, got {max_pos_per_identity}")
    missing = {"identity", "is_fake"} - set(table.columns)
    if missing:
        raise ValueError(f"the image table lacks column(s) {', '.join(sorted(missing))}")
    rng = np.random.default_rng(seed)
    ident = table["identity"].astype(str).to_numpy()
    fake = table["is_fake"].astype(bool).to_numpy()
    labels = table.index.to_numpy()

    # Real photos grouped by identity (sorted, so the draw does not depend on row order), as one contiguous array.
    real_pos = np.flatnonzero(~fake)
    real_pos = real_pos[np.lexsort((labels[real_pos], ident[real_pos]))]
    real_all = labels[real_pos]
    names, starts, sizes = np.unique(ident[real_pos], return_index=True, return_counts=True)
    fake_pos = np.flatnonzero(fake)
    fake_pos = fake_pos[np.lexsort((labels[fake_pos], ident[fake_pos]))]
    fake_names, fake_starts = np.unique(ident[fake_pos], return_index=True)
    fake_by_identity = dict(zip(fake_names, np.split(labels[fake_pos], fake_starts[1:])))

    parts_a, parts_b, parts_kind = [], [], []
    with_pairs = without_fakes = capped = 0
    for name, start, n in zip(names, starts, sizes):
        if n < 2:
            continue
        with_pairs += 1
        reals = real_all[start : start + n]
        iu, ju = np.triu_indices(n, 1)
        k = len(iu)
        if max_pos_per_identity is not None and k > max_pos_per_identity:
            keep = np.sort(rng.choice(k, max_pos_per_identity, replace=False))
            iu, ju, k = iu[keep], ju[keep], max_pos_per_identity
            capped += 1
        fakes = fake_by_identity.get(name)
        if fakes is None:
            without_fakes += 1
        n_fake = min(int(2 * k * fake_share), k) if fakes is not None else 0  # the recipe's 0.25: k // 2
        n_other = k - n_fake if len(real_all) > n else 0  # a lone identity has nobody else to pair with
        # Other identities' real photos: draw from the real photos outside [start, start + n) without building a mask.
        other = rng.integers(0, len(real_all) - n, size=n_other) if n_other else np.zeros(0, np.int64)
        other = other + (other >= start) * n
        parts_a += [reals[iu], _cycle(rng, reals, n_other), _cycle(rng, reals, n_fake)]
        parts_b += [reals[ju], real_all[other], _cycle(rng, fakes, n_fake) if n_fake else reals[:0]]
        parts_kind += [np.full(k, SAME, np.int8), np.full(n_other, DIFFERENT, np.int8), np.full(n_fake, OWN_FAKE, np.int8)]

    if parts_kind:
        a, b, kind = np.concatenate(parts_a), np.concatenate(parts_b), np.concatenate(parts_kind)
    else:
        a, b, kind = labels[:0], labels[:0], np.zeros(0, np.int8)
    if shuffle:
        order = rng.permutation(len(kind))
        a, b, kind = a[order], b[order], kind[order]
    pairs = Pairs(a=a, b=b, kind=kind)
    stats = PairStats(
        identities=len(names),
        identities_with_pairs=with_pairs,
        identities_without_fakes=without_fakes,
        identities_capped=capped,
        counts=pairs.counts(),
    )
    return pairs, stats
