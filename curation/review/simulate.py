"""A simulated reviewer: how well do a few answers estimate the precision of the flags nobody answered?

Why: the point of the "information" queue is that a reviewer answers a small, well-chosen sample and then applies the
rest (`export --unreviewed apply`) with a known error rate. Where the truth is known (the planted-noise demo), this
checks that claim: a reviewer who answers exactly as the truth says works through the queue like the app's Queue page
(open the first identity, answer its open flags, take the queue again), and the estimate it then gets for the open
flags is set beside their true precision. Nothing is written to the store: the answers live in a copy of the flags.

Example:
    >>> flags = store.flags()
    >>> sim = simulate_review(flags, noise.flag_truth(flags, truth), summary, budget=60)
    >>> print(sim.describe())
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from curation.review.queue import ReportSummary, draw, flag_worth, rank_by_information
from labels.estimate import PrecisionEstimate, band_priorities, estimate_precision, with_bands

SIMULATION_ORDERS = ("information", "worth", "random")


@dataclass(frozen=True)
class SimulatedReview:
    """The estimate after `n_answered` simulated answers, and the truth it estimates."""

    order: str
    n_answered: int
    n_identities: int  # identities opened
    estimate: PrecisionEstimate  # of the flags still open
    truth: float | None  # share of right flags among them

    @property
    def error(self) -> float | None:
        """estimate - truth, in precision units (None without an estimate)."""
        if self.truth is None or self.estimate.precision is None:
            return None
        return self.estimate.precision - self.truth

    @property
    def covered(self) -> bool:
        """Whether the interval holds the truth."""
        e = self.estimate
        return e.low is not None and self.truth is not None and e.low <= self.truth <= e.high

    def describe(self) -> str:
        truth = "n/a" if self.truth is None else f"{100 * self.truth:.1f}%"
        return (f"after {self.n_answered} answers ({self.order} order, {self.n_identities} identities opened): "
                f"{self.estimate.n_flags} open flags, {self.estimate.describe()}; true precision {truth}")

    def to_dict(self) -> dict:
        return {"order": self.order, "n_answered": self.n_answered, "n_identities": self.n_identities,
                "estimate": self.estimate.to_dict(), "truth": None if self.truth is None else round(self.truth, 4)}


def simulate_review(
    flags: pd.DataFrame,
    right: Sequence[bool],
    summary: ReportSummary,
    *,
    budget: int = 60,
    order: str = "information",
    seed: int = 0,
    whole_identities: bool = False,
) -> SimulatedReview:
    """Answer `budget` open flags as `right` says (confirm when right, keep when not) and estimate the rest.

    flags: the store's flags (id, identity, kind, score, status), open ones are the population; right: per row, the
    truth. order: "information" opens identities in that queue order and answers the sample flag the page marks;
    "worth" opens identities in worth order and answers every open flag there (how a reviewer fixing errors works);
    "random" answers flags drawn at random, one by one (the textbook sample, for comparison). With
    `whole_identities`, the information reviewer also answers every other open flag of each identity it opens.
    seed varies the draws within bands.
    """
    if order not in SIMULATION_ORDERS:
        raise ValueError(f"order must be one of {', '.join(SIMULATION_ORDERS)}, not {order!r}")
    table = flags[["id", "identity", "kind", "score", "status"]].copy().reset_index(drop=True)
    table["action"] = None
    right = np.asarray(right, dtype=bool)
    is_open = table.status.eq("open").to_numpy().copy()
    answered, opened = 0, 0

    def answer(rows) -> None:
        nonlocal answered
        for r in rows:
            if answered >= budget:
                return
            table.loc[r, ["status", "action"]] = ["resolved", "remove" if right[r] else "keep"]
            is_open[r] = False
            answered += 1

    if order == "random":
        answer(np.flatnonzero(is_open)[np.argsort(draw(table.id.to_numpy()[is_open], seed + 1), kind="stable")])
    while answered < budget and is_open.any():
        banded = with_bands(table)
        if order == "information":
            head = rank_by_information(banded, summary, seed=seed).iloc[0]
            first = head.identity
            if not whole_identities:
                answer(np.flatnonzero(table.id.eq(head.flag_id).to_numpy()))
                opened += 1
                continue
        else:
            open_ = table[is_open]
            worth = open_.assign(worth=flag_worth(open_, summary)).groupby("identity").worth.sum()
            first = worth.sort_index().sort_values(ascending=False, kind="stable").index[0]
        rows = np.flatnonzero(is_open & table.identity.eq(first).to_numpy())
        prio = banded.iloc[rows].merge(band_priorities(banded), on=["kind", "band"], how="left").priority.to_numpy()
        answer(rows[np.lexsort((draw(table.id.to_numpy()[rows], seed), -np.nan_to_num(prio)))])
        opened += 1
    banded = with_bands(table)
    estimate = estimate_precision(banded)
    truth = float(right[is_open].mean()) if is_open.any() else None
    return SimulatedReview(order, answered, opened, estimate, truth)
