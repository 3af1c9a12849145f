"""How many of the open flags are right, estimated from the reviewers' answers so far.

Why: a reviewer cannot look at every flag of a large set, and `export --unreviewed apply` acts on the ones nobody
looked at. What a reviewer's answers say about those is a sampling question: the answered flags are a sample, the open
ones the rest of the population. This module turns the answers into
- confirmed rates per flag kind x score band (Wilson intervals): how often the reviewers agreed with the cleaner;
- the estimated precision of any set of open flags (per kind and overall, with an interval), and so how many real
  errors the open flags hold;
- how much one more answer in each band would tighten that estimate, which the review queue uses to choose the flags
  worth answering next (`curation.review.queue`, order "information").
Plain data in and out (numpy + pandas; no torch, no Streamlit), so export, the app and the demo compute the same numbers.

Definitions:
- A flag is *answered* when a live decision resolved it: *confirmed* when that decision changed the photo's label
  (`labels.vocab.VERDICTS`: remove, move, mark fake or real, merge), *rejected* when it kept it (keep, restore).
- Score bands: the flags of one kind (all of them in the store, answered or not, so the edges do not move while a
  reviewer works) are cut at quantiles of their scores into up to MAX_BANDS bands of at least MIN_PER_BAND flags;
  flags without a score form a band of their own. Quantiles need no knowledge of what the score means or which way it
  points, so the same bands work for today's cosines and ratios and for a calibrated probability.
- Precision of a set S of open flags: sum over bands h of N_h x p_h / N (N_h of S's N flags in band h, p_h the band's
  confirmed rate). A band nobody answered yet borrows its kind's pooled rate (else every kind's) for the point
  estimate, and counts as fully unknown in the interval. Interval: normal on that stratified sum, with an
  Agresti-Coull variance per band (sound at 0 or 100% confirmed) plus the binomial spread of S's own flags, since S is
  a finite set of flags, not an infinite population.
The answered flags must be a fair sample of each band for this to hold: the "information" queue picks flags at random
within a band; answers given in "worth" order (borderline flags first) lean towards the uncertain end of each band.

Example:
    >>> flags = with_bands(store.flag_answers())
    >>> est = estimate_precision(flags)                       # the open flags
    >>> est.describe()
    'estimated precision 94.1% (95% CI 89.0-97.3%) from 60 reviewed flags'
    >>> band_rates(flags)[["kind", "band", "n_answered", "rate", "rate_low", "rate_high"]]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from labels.vocab import VERDICTS

Z = 1.959963984540054  # two-sided 95%
MAX_BANDS = 4
MIN_PER_BAND = 30
TIGHT = 0.10  # a band's rate is known well enough once its Wilson interval is within +-10 points
NO_SCORE = -1  # the band of flags without a score


def wilson(confirmed: int | np.ndarray, answered: int | np.ndarray, z: float = Z) -> tuple:
    """Wilson score interval of confirmed / answered; (0, 1) where nothing was answered. Works on arrays too."""
    k, n = np.asarray(confirmed, dtype=float), np.asarray(answered, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = np.where(n > 0, np.clip(centre - half, 0, 1), 0.0), np.where(n > 0, np.clip(centre + half, 0, 1), 1.0)
    return (float(low), float(high)) if low.ndim == 0 else (low, high)


def verdict(action: str | None) -> str | None:
    """'confirmed', 'rejected' or None (not answered) for the action of the decision that answered a flag."""
    return VERDICTS.get(action) if isinstance(action, str) else None


def with_bands(flags: pd.DataFrame) -> pd.DataFrame:
    """The flags with `band` (per kind, 0 = lowest scores; NO_SCORE without a score) and `verdict` added.

    flags: one row per flag with kind, score, status ('open' | 'resolved') and action (of the live decision that
    answered it, None when open), as `LabelStore.flag_answers()` returns them. Band the whole table at once: the edges
    are quantiles of each kind's scores in it.
    """
    out = flags.copy()
    score = pd.to_numeric(out["score"], errors="coerce").to_numpy(dtype=float)
    band = np.full(len(out), NO_SCORE, dtype=np.int64)
    kinds = out["kind"].to_numpy(dtype=object)
    for kind in pd.unique(kinds):
        rows = np.flatnonzero((kinds == kind) & np.isfinite(score))
        if not len(rows):
            continue
        n_bands = min(MAX_BANDS, max(1, len(rows) // MIN_PER_BAND))
        inner = np.unique(np.quantile(score[rows], np.arange(1, n_bands) / n_bands)) if n_bands > 1 else []
        band[rows] = np.searchsorted(inner, score[rows], side="right")
    out["band"] = band
    out["verdict"] = [verdict(a) for a in out["action"]]
    return out


def band_rates(flags: pd.DataFrame) -> pd.DataFrame:
    """Confirmed rate per (kind, band) of banded flags (`with_bands`), with its Wilson interval.

    Columns: kind, band, score_low, score_high (the band's score range), n_flags, n_open, n_answered, n_confirmed,
    rate (confirmed / answered, NaN when none answered), rate_low, rate_high.
    """
    cols = ["kind", "band", "score_low", "score_high", "n_flags", "n_open", "n_answered", "n_confirmed", "rate",
            "rate_low", "rate_high"]
    if flags.empty:
        return pd.DataFrame(columns=cols)
    f = flags.assign(
        _open=flags["status"].eq("open"),
        _answered=flags["verdict"].notna(),
        _confirmed=flags["verdict"].eq("confirmed"),
        _score=pd.to_numeric(flags["score"], errors="coerce"),
    )
    g = f.groupby(["kind", "band"], sort=True).agg(
        score_low=("_score", "min"), score_high=("_score", "max"), n_flags=("kind", "size"), n_open=("_open", "sum"),
        n_answered=("_answered", "sum"), n_confirmed=("_confirmed", "sum"),
    ).reset_index()
    with np.errstate(invalid="ignore", divide="ignore"):
        g["rate"] = g.n_confirmed / g.n_answered.where(g.n_answered > 0)
    g["rate_low"], g["rate_high"] = wilson(g.n_confirmed.to_numpy(), g.n_answered.to_numpy())
    return g[cols]


@dataclass(frozen=True)
class PrecisionEstimate:
    """The estimated share of right flags in a set of flags, and what it rests on.

    precision / low / high: None when no flag of any kind has been answered yet. right, right_low, right_high: the
    same times n_flags (how many of those flags are real errors). per_kind: one row per kind of the set (columns kind,
    n_flags, n_reviewed, precision, low, high, right).
    """

    n_flags: int
    n_reviewed: int  # answered flags the estimate rests on (every kind)
    precision: float | None
    low: float | None
    high: float | None
    per_kind: pd.DataFrame = field(repr=False)
    confidence: float = 0.95

    @property
    def right(self) -> float | None:
        return None if self.precision is None else self.precision * self.n_flags

    @property
    def right_low(self) -> float | None:
        return None if self.low is None else self.low * self.n_flags

    @property
    def right_high(self) -> float | None:
        return None if self.high is None else self.high * self.n_flags

    def describe(self) -> str:
        """One line: 'estimated precision 94.1% (95% CI 89.0-97.3%) from 60 reviewed flags', or why there is none."""
        if self.precision is None:
            return "no reviewed sample yet"
        return (f"estimated precision {100 * self.precision:.1f}% ({100 * self.confidence:.0f}% CI "
                f"{100 * self.low:.1f}-{100 * self.high:.1f}%) from {self.n_reviewed:,} reviewed flag(s)")

    def to_dict(self) -> dict:
        """For JSON (the export manifest, report.json)."""
        return {
            "n_flags": self.n_flags,
            "n_reviewed": self.n_reviewed,
            "precision": _round(self.precision),
            "interval": None if self.low is None else [_round(self.low), _round(self.high)],
            "confidence": self.confidence,
            "estimated_right": _round(self.right, 1),
            "per_kind": [
                {k: (_round(v) if isinstance(v, float) else v) for k, v in row.items()}
                for row in self.per_kind.to_dict("records")
            ],
            "method": "stratified by flag kind x score band; Wilson rates per band, Agresti-Coull + finite-set variance",
        }


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def estimate_precision(flags: pd.DataFrame, among: pd.Series | np.ndarray | None = None) -> PrecisionEstimate:
    """Estimated precision of the flags selected by `among` (a boolean mask over `flags`; default: the open ones).

    flags: banded (`with_bands`), answered and open together: the answered ones give each band its rate.
    Example: `estimate_precision(flags, flags.status.eq("open") & flags.kind.eq("outlier")).describe()`.
    """
    among = flags["status"].eq("open").to_numpy() if among is None else np.asarray(among, dtype=bool)
    rates = band_rates(flags)
    target = flags[among]
    n_reviewed = int(rates.n_answered.sum()) if len(rates) else 0
    per_kind = []
    for kind, part in target.groupby("kind", sort=True):
        p, lo, hi = _stratified(part, rates)
        answered = int(rates.loc[rates.kind == kind, "n_answered"].sum())
        per_kind.append({"kind": kind, "n_flags": len(part), "n_reviewed": answered, "precision": p, "low": lo,
                         "high": hi, "right": None if p is None else p * len(part)})
    p, lo, hi = _stratified(target, rates)
    table = pd.DataFrame(per_kind, columns=["kind", "n_flags", "n_reviewed", "precision", "low", "high", "right"])
    return PrecisionEstimate(len(target), n_reviewed, p, lo, hi, table)


def _band_estimates(rates: pd.DataFrame) -> pd.DataFrame:
    """Per band: the point estimate (its own rate, else its kind's pooled rate, else the overall one) and the
    Agresti-Coull centre and variance of its rate (centre 1/2, variance ~0.065 for a band nobody answered)."""
    r = rates.set_index(["kind", "band"])
    kind_k = r.groupby(level="kind").n_confirmed.transform("sum")
    kind_n = r.groupby(level="kind").n_answered.transform("sum")
    all_k, all_n = r.n_confirmed.sum(), r.n_answered.sum()
    point = r.rate.copy()
    point = point.where(point.notna(), kind_k / kind_n.where(kind_n > 0))
    point = point.fillna(all_k / all_n if all_n else np.nan)
    z2 = Z * Z
    centre = (r.n_confirmed + z2 / 2) / (r.n_answered + z2)
    return pd.DataFrame({"point": point, "centre": centre, "var": centre * (1 - centre) / (r.n_answered + z2)})


def _stratified(target: pd.DataFrame, rates: pd.DataFrame) -> tuple[float | None, float | None, float | None]:
    if target.empty or not len(rates) or rates.n_answered.sum() == 0:
        return None, None, None
    est = _band_estimates(rates)
    n_h = target.groupby(["kind", "band"]).size()
    e = est.loc[n_h.index]
    w = n_h.to_numpy(dtype=float) / len(target)
    p = float(np.sum(w * e.point.to_numpy()))
    var = np.sum(w * w * (e["var"].to_numpy() + e.centre.to_numpy() * (1 - e.centre.to_numpy()) / n_h.to_numpy()))
    half = Z * float(np.sqrt(var))
    return p, max(0.0, p - half), min(1.0, p + half)


def band_priorities(flags: pd.DataFrame) -> pd.DataFrame:
    """How much one more answer in each band would narrow the estimate of the open flags' precision.

    priority of band h = (N_h / N)^2 x c_h (1 - c_h) x (1 / (n_h + z^2) - 1 / (n_h + 1 + z^2)): the drop in the
    estimate's variance (N_h of the N open flags in the band, n_h answered, c_h the Agresti-Coull centre of its rate),
    always below 1. A kind nobody answered yet comes first (priority 1 + N_h / N): its bands would borrow every other
    kind's rate, and kinds differ far more than bands of one kind do (a no_face flag is not an outlier flag).
    It is 0 for a band with no open flag, and for one whose Wilson interval is already within +-TIGHT: once every band
    is tight, answers no longer need to be spread out. Columns: kind, band, n_open, n_answered, priority, tight.
    """
    rates = band_rates(flags)
    cols = ["kind", "band", "n_open", "n_answered", "priority", "tight"]
    if rates.empty:
        return pd.DataFrame(columns=cols)
    z2 = Z * Z
    share = rates.n_open / max(1, int(rates.n_open.sum()))
    c = (rates.n_confirmed + z2 / 2) / (rates.n_answered + z2)
    gain = share**2 * c * (1 - c) * (1 / (rates.n_answered + z2) - 1 / (rates.n_answered + 1 + z2))
    unseen_kind = rates.groupby("kind").n_answered.transform("sum").eq(0)
    tight = (rates.rate_high - rates.rate_low) / 2 <= TIGHT
    priority = np.where(unseen_kind, 1 + share, np.where(tight, 0.0, gain))
    rates = rates.assign(priority=np.where(rates.n_open == 0, 0.0, priority), tight=tight)
    return rates[cols]
