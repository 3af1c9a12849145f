"""Verification metrics: EER (two conventions), TAR at fixed FAR, accuracy, per-pair-type error rates, ROC/DET points.

Why one module: training validation, `curation.evaluate`, `curation.predict` and the review app must report the same
numbers for the same scores, so each metric is defined once, here, on plain arrays (numpy only: no torch, no sklearn).

Conventions (a pair is *accepted* as "same person" when `score >= threshold`; label 1 = same person):
- FAR(t) = mean(negatives >= t), FRR(t) = mean(positives < t), TAR(t) = 1 - FRR(t).
- **EER, bob.measure convention** (`equal_error_rate`, `eer` in reports): the threshold t minimising |FAR(t) - FRR(t)|
  over every distinct score (no threshold between two scores gives other rates), and EER = (FAR + FRR) / 2 there.
  |FAR - FRR| is compared in exact integer arithmetic; when two thresholds tie, the higher one wins, as in bob.measure's
  scan. The reported threshold is the lowest accepted score itself; bob.measure reports the midpoint between it and the
  next lower distinct score, which gives the same rates.
- **EER, organisers' convention** (`roc_eer`, `eer_roc` in reports): the Kryptonite challenge scored with
  `fpr, tpr, thr = sklearn.metrics.roc_curve(y, s)` (defaults, so `drop_intermediate=True`), `fnr = 1 - tpr`,
  `i = nanargmin(|fnr - fpr|)`, EER = `fnr[i]`. `roc_curve` here reproduces sklearn's output array for array
  (including the dropped collinear points and the leading `(0, 0, inf)` point), because which points survive the drop
  changes `i` and so the EER. The two conventions usually agree to ~1/n; on small or heavily tied sets they can differ
  a lot (a tie group straddling FAR = FRR, or the point on FAR = FRR dropped as collinear).
- **TAR at FAR f** (`tar_at_far`): the highest TAR over thresholds whose FAR <= f, i.e. the ROC step curve read at f
  without interpolation; the reported threshold is the lowest one with FAR <= f. Tied scores cannot be split, so the
  FAR achieved may be below f (it is reported). "FAR <= f" means fp / n_neg <= f in float64, so 29 of 100 meets 0.29.
  When f < 1 / n_negatives no false accept is allowed at all and the value would only measure the single highest
  negative: TAR is then `None` (JSON null) rather than a number that looks like a rate at f. bob.measure's
  `far_threshold` puts the threshold on a negative's score instead, which can give a lower TAR when positives fall
  between two negatives.
- **Per pair type** (`error_rates_by_type`): within each type, false rejects among its positives and false accepts among
  its negatives at one threshold (the bob EER threshold unless given). For the challenge's types this is the same-person
  false reject rate, the different-person false accept rate and the deepfake false accept rate.

Speed: every curve metric is read off the cumulative positive/negative counts at each distinct score, computed with one
sort. Scores that are float32 values (cosines of float32 embeddings) are sorted as int64 keys carrying the label in the
lowest bit; other float64 scores take two plain sorts (all, positives) and a searchsorted. Measure with
`python benchmarks/bench_metrics.py` (10M pairs).

Example:
    >>> report = verification_report(scores, labels, types=pair_types)
    >>> report.eer, report.eer_threshold, report.eer_roc, report.tar_at_far["0.001"]
    >>> json.dumps(report.to_dict())           # plain JSON: this is what metrics.json and performance_history hold
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)

# Curve thinning for plots and metrics.json: the points where FAR crosses each 1/_PER_DECADE of a decade and where TAR
# crosses each 1/_TAR_STEPS, so a 10M-pair curve becomes ~1-2k points that look identical on a plot.
_PER_DECADE = 100
_TAR_STEPS = 500


def far_key(far: float) -> str:
    """The key under which a FAR appears in `tar_at_far` mappings and JSON: `far_key(1e-3) == "0.001"`."""
    return f"{far:g}"


def _num(x: float | None) -> float | None:
    """A JSON-safe float: None for missing, NaN or infinite values (json.dumps would write invalid `Infinity`)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class EER:
    """EER in the bob.measure convention: `eer = (far + frr) / 2` at `threshold` (accept when score >= threshold)."""

    eer: float
    threshold: float
    far: float
    frr: float

    def to_dict(self) -> dict:
        return {"eer": self.eer, "threshold": self.threshold, "far": self.far, "frr": self.frr}


@dataclass(frozen=True)
class RocEER:
    """The organisers' EER: `eer = fnr[i]` at the roc_curve point `i` closest to fnr == fpr; `threshold` may be inf."""

    eer: float
    threshold: float
    fpr: float
    index: int  # into the arrays `roc_curve` returns

    def to_dict(self) -> dict:
        return {"eer": self.eer, "threshold": _num(self.threshold), "fpr": self.fpr, "index": self.index}


@dataclass(frozen=True)
class TarAtFar:
    """TAR at a target FAR. `tar` is None when the target is below 1 / n_negatives (see the module docstring)."""

    far_target: float
    tar: float | None
    threshold: float | None  # the lowest threshold whose FAR <= far_target, a score (None: unmeasurable, or inf)
    far: float | None  # the FAR actually achieved (<= far_target; lower when tied scores cannot be split)
    n_false_accepts: int | None

    def to_dict(self) -> dict:
        return {
            "far_target": self.far_target,
            "tar": self.tar,
            "threshold": _num(self.threshold),
            "far": self.far,
            "n_false_accepts": self.n_false_accepts,
        }


@dataclass(frozen=True)
class TypeRates:
    """Errors of one pair type at one threshold.

    `kind` says which error the type can make: "false_reject" (only positives, e.g. same person), "false_accept" (only
    negatives, e.g. different person, deepfake) or "mixed"; `rate` is that error's rate (for mixed: all errors / n).
    """

    n: int
    n_pos: int
    n_neg: int
    false_rejects: int
    false_accepts: int
    kind: str
    rate: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Curve:
    """ROC/DET points ordered from the highest threshold down: `far` rises from 0, `frr` falls to 0.

    The first point is "accept nothing" (far 0, frr 1, threshold inf). `tar` is `1 - frr`.
    """

    far: np.ndarray
    frr: np.ndarray
    threshold: np.ndarray

    @property
    def tar(self) -> np.ndarray:
        return 1.0 - self.frr

    def to_dict(self) -> dict:
        return {
            "far": self.far.tolist(),
            "frr": self.frr.tolist(),
            "threshold": [_num(t) for t in self.threshold.tolist()],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Curve":
        """Read back `to_dict()` (e.g. the `curve` of a metrics.json); a null threshold becomes inf."""
        thr = [np.inf if t is None else t for t in d["threshold"]]
        return cls(np.asarray(d["far"], float), np.asarray(d["frr"], float), np.asarray(thr, float))


@dataclass(frozen=True)
class VerificationReport:
    """Everything `verification_report` measures; `to_dict()` is the metrics.json / performance_history record."""

    n_pos: int
    n_neg: int
    eer: float
    eer_threshold: float
    eer_far: float
    eer_frr: float
    eer_roc: float
    eer_roc_threshold: float
    threshold: float  # operating threshold of accuracy, far, frr and per_type
    threshold_source: str  # "eer" (the bob EER threshold) or "given"
    accuracy: float
    far: float
    frr: float
    tar_at_far: dict[str, TarAtFar]
    per_type: dict[str, TypeRates] | None
    curve: Curve | None

    def to_dict(self) -> dict:
        """Plain JSON types only; `tar_at_far` maps far_key(f) -> TAR (or None), details sit in `tar_at_far_detail`."""
        return {
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "eer_far": self.eer_far,
            "eer_frr": self.eer_frr,
            "eer_roc": self.eer_roc,
            "eer_roc_threshold": _num(self.eer_roc_threshold),
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "accuracy": self.accuracy,
            "far": self.far,
            "frr": self.frr,
            "tar_at_far": {k: v.tar for k, v in self.tar_at_far.items()},
            "tar_at_far_detail": {k: v.to_dict() for k, v in self.tar_at_far.items()},
            "per_type": None if self.per_type is None else {k: v.to_dict() for k, v in self.per_type.items()},
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "curve": None if self.curve is None else self.curve.to_dict(),
        }

    def describe(self) -> str:
        """A few lines a person reads at the end of a run."""
        tars = ", ".join(
            f"{k}: {'n/a' if v.tar is None else f'{v.tar:.4f}'}" for k, v in self.tar_at_far.items()
        )
        lines = [
            f"{self.n_pos + self.n_neg:,} pairs ({self.n_pos:,} same person, {self.n_neg:,} not)",
            f"EER {self.eer:.4f} at threshold {self.eer_threshold:.6g} "
            f"(FAR {self.eer_far:.4f}, FRR {self.eer_frr:.4f}); organisers' roc_curve EER {self.eer_roc:.4f}",
            f"TAR at FAR {tars}" + ("" if all(v.tar is not None for v in self.tar_at_far.values())
                                     else " (n/a: fewer than 1/FAR negative pairs)"),
            f"at threshold {self.threshold:.6g} ({self.threshold_source}): accuracy {self.accuracy:.4f}, "
            f"FAR {self.far:.4f}, FRR {self.frr:.4f}",
        ]
        for name, r in (self.per_type or {}).items():
            what = {"false_reject": "falsely rejected", "false_accept": "falsely accepted"}.get(r.kind, "wrong")
            lines.append(f"  {name}: {r.rate:.4f} {what} ({r.false_rejects + r.false_accepts:,} of {r.n:,})")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Counts:
    """Each distinct score as a threshold, highest first, with the positives and negatives scoring at or above it."""

    thresholds: np.ndarray  # float64, strictly decreasing
    tp: np.ndarray  # int64, non-decreasing
    fp: np.ndarray
    n_pos: int
    n_neg: int


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validated (float64 scores, bool labels); ValueError with the reason otherwise."""
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scores must be numbers ({exc})") from None
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if len(s) != len(y):
        raise ValueError(f"scores and labels differ in length: {len(s)} vs {len(y)}")
    bad = ~np.isfinite(s)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{int(bad.sum())} score(s) are NaN or infinite, first at index {i} ({s[i]})")
    if y.dtype != bool:
        if not np.issubdtype(y.dtype, np.number):
            raise ValueError(f"labels must be 0 or 1, got dtype {y.dtype}")
        is_pos = y == 1
        wrong = ~(is_pos | (y == 0))
        if wrong.any():
            i = int(np.argmax(wrong))
            raise ValueError(f"labels must be 0 or 1; index {i} holds {y[i]}")
        y = is_pos
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError(
            f"needs at least one positive (label 1) and one negative (label 0) pair; got {n_pos} and {len(y) - n_pos}"
        )
    return s, y


def _counts(s: np.ndarray, y: np.ndarray) -> _Counts:
    n, n_pos = len(s), int(np.count_nonzero(y))
    s32 = s.astype(np.float32) + np.float32(0.0)  # + 0.0 turns -0.0 into 0.0: equal scores must get equal keys
    if np.array_equal(s32, s):
        # Scores that are float32 values (cosines of float32 embeddings, most submissions): one sort of int64 keys
        # holding the score's order-preserving bits with the label in the lowest bit, then counts by cumsum.
        bits = s32.view(np.int32).astype(np.int64)
        key = ((bits ^ ((bits >> 31) & 0x7FFFFFFF)) << 1) | y
        key.sort()
        score_key = key >> 1
        starts = np.flatnonzero(np.r_[True, score_key[1:] != score_key[:-1]])  # first index of each distinct score
        ordered = score_key[starts]
        values = (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).astype(np.int32).view(np.float32).astype(np.float64)
        pos_cum = np.cumsum(key & 1)
        tp = n_pos - np.where(starts > 0, pos_cum[starts - 1], 0)
    else:
        # Any other float64: two value sorts (sorting plain floats is several times faster than argsort + gather).
        all_sorted = np.sort(s)
        pos_sorted = np.sort(s[y])
        starts = np.flatnonzero(np.r_[True, all_sorted[1:] != all_sorted[:-1]])
        values = all_sorted[starts]
        tp = n_pos - np.searchsorted(pos_sorted, values, side="left")
    fp = (n - starts) - tp
    return _Counts(values[::-1], tp[::-1].astype(np.int64), fp[::-1].astype(np.int64), n_pos, n - n_pos)


def _eer(c: _Counts) -> EER:
    # |FAR - FRR| * n_pos * n_neg, exact in int64; argmin takes the first, i.e. the highest threshold among ties.
    gap = np.abs(c.fp * c.n_pos - (c.n_pos - c.tp) * c.n_neg)
    i = int(np.argmin(gap))
    far = c.fp[i] / c.n_neg
    frr = (c.n_pos - c.tp[i]) / c.n_pos
    return EER(eer=float((far + frr) / 2), threshold=float(c.thresholds[i]), far=float(far), frr=float(frr))


def _roc(c: _Counts, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fps, tps, thr = c.fp.astype(np.float64), c.tp.astype(np.float64), c.thresholds
    if drop_intermediate and len(fps) > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps, tps, thr = np.r_[0.0, fps], np.r_[0.0, tps], np.r_[np.inf, thr]
    return fps / fps[-1], tps / tps[-1], thr


def _roc_eer(c: _Counts) -> RocEER:
    fpr, tpr, thr = _roc(c)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return RocEER(eer=float(fnr[i]), threshold=float(thr[i]), fpr=float(fpr[i]), index=i)


def _tar_at_far(c: _Counts, fars: Sequence[float]) -> dict[str, TarAtFar]:
    fp = np.r_[0, c.fp]
    tp = np.r_[0, c.tp]
    thr = np.r_[np.inf, c.thresholds]
    far_at = fp / c.n_neg  # same float division as the target comparison below: exact on ties like 29/100 vs 0.29
    out: dict[str, TarAtFar] = {}
    for f in fars:
        f = float(f)
        if not 0.0 < f <= 1.0:
            raise ValueError(f"a target FAR must be in (0, 1], got {f}")
        if f < 1.0 / c.n_neg:
            out[far_key(f)] = TarAtFar(f, None, None, None, None)
            continue
        i = int(np.searchsorted(far_at, f, side="right")) - 1  # lowest threshold with FAR <= f
        out[far_key(f)] = TarAtFar(
            far_target=f, tar=float(tp[i] / c.n_pos), threshold=_num(thr[i]), far=float(far_at[i]),
            n_false_accepts=int(fp[i]),
        )
    return out


def _thin(c: _Counts) -> np.ndarray:
    """Indices into the curve's arrays (highest threshold first) that keep the shape of ROC and DET plots: the first
    threshold reaching each FAR of a log grid and each TAR of a linear grid, plus the last point."""
    decades = math.ceil(math.log10(c.n_neg)) + 1
    far_grid = 10.0 ** (-np.arange(decades * _PER_DECADE + 1) / _PER_DECADE)
    tar_grid = np.arange(_TAR_STEPS + 1) / _TAR_STEPS
    idx = np.r_[np.searchsorted(c.fp, far_grid * c.n_neg), np.searchsorted(c.tp, tar_grid * c.n_pos), len(c.fp) - 1]
    return np.unique(np.minimum(idx, len(c.fp) - 1))


def _curve(c: _Counts, thin: bool) -> Curve:
    idx = _thin(c) if thin else slice(None)
    return Curve(
        far=np.r_[0.0, c.fp[idx] / c.n_neg],
        frr=np.r_[1.0, 1.0 - c.tp[idx] / c.n_pos],
        threshold=np.r_[np.inf, c.thresholds[idx]],
    )


def _rates_at(s: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float, float]:
    accepted = s >= threshold
    n_pos = int(y.sum())
    fa = int(np.count_nonzero(accepted & ~y))
    fr = int(np.count_nonzero(~accepted & y))
    return 1.0 - (fa + fr) / len(s), fa / (len(s) - n_pos), fr / n_pos


def _by_type(s: np.ndarray, y: np.ndarray, types, type_names: Sequence[str] | None, threshold: float):
    t = np.asarray(types)
    if t.shape != s.shape:
        raise ValueError(f"types must have one entry per pair: {t.shape} vs {s.shape}")
    if np.issubdtype(t.dtype, np.integer) and int(t.max()) - int(t.min()) < 65536:
        lo = int(t.min())
        group = (t - lo).astype(np.intp)  # integer codes group by bincount, with no sort
        codes = np.arange(lo, int(t.max()) + 1)
    else:
        codes, group = np.unique(t, return_inverse=True)
    if type_names is not None:
        if not np.issubdtype(t.dtype, np.integer) or codes[0] < 0 or codes[-1] >= len(type_names):
            raise ValueError(f"with type_names, types must be integer codes in [0, {len(type_names)})")
    accepted = s >= threshold
    k = len(codes)
    n = np.bincount(group, minlength=k)
    n_pos = np.bincount(group[y], minlength=k)
    fr = np.bincount(group[y & ~accepted], minlength=k)
    fa = np.bincount(group[~y & accepted], minlength=k)
    out: dict[str, TypeRates] = {}
    for j in np.flatnonzero(n):  # codes between the smallest and the largest that do not occur are skipped
        name = str(type_names[codes[j]]) if type_names is not None else str(codes[j])
        neg = int(n[j] - n_pos[j])
        if neg == 0:
            kind, rate = "false_reject", fr[j] / n_pos[j]
        elif n_pos[j] == 0:
            kind, rate = "false_accept", fa[j] / neg
        else:
            kind, rate = "mixed", (fr[j] + fa[j]) / n[j]
        out[name] = TypeRates(int(n[j]), int(n_pos[j]), neg, int(fr[j]), int(fa[j]), kind, float(rate))
    return out


def equal_error_rate(scores, labels) -> EER:
    """EER in the bob.measure convention, with the threshold, FAR and FRR where it is reached.

    Inputs: `scores` (higher = more likely the same person) and `labels` (1 same, 0 not), 1-D, same length, at least
    one of each label; scores finite. Output: `EER(eer, threshold, far, frr)`; accept a pair when score >= threshold.

    Example:
        >>> equal_error_rate([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
        EER(eer=0.5, threshold=0.8, far=0.5, frr=0.5)
    """
    return _eer(_counts(*_check(scores, labels)))


def roc_curve(scores, labels, *, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(fpr, tpr, thresholds)` exactly as `sklearn.metrics.roc_curve(labels, scores)` returns them (note the order
    of the arguments: scores first, as everywhere in this module).

    Thresholds decrease from `inf`; with `drop_intermediate` (sklearn's default) points collinear with their
    neighbours are dropped by sklearn's second-difference rule. Unlike sklearn, one-class input raises ValueError
    instead of returning NaN rates.

    Example:
        >>> fpr, tpr, thr = roc_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
        >>> fpr.tolist(), tpr.tolist(), thr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0], [inf, 0.9, 0.8, 0.3, 0.1])
    """
    return _roc(_counts(*_check(scores, labels)), drop_intermediate)


def roc_eer(scores, labels) -> RocEER:
    """The Kryptonite organisers' EER: `fnr[i]` at `i = nanargmin(|fnr - fpr|)` on sklearn's default `roc_curve`.

    Example:
        >>> roc_eer([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]).eer
        0.5
    """
    return _roc_eer(_counts(*_check(scores, labels)))


def det_curve(scores, labels, *, thin: bool = True) -> Curve:
    """FAR/FRR at every distinct threshold (highest first), thinned by default to ~1-2k points for plots and JSON.

    Thinning keeps the first point reaching each FAR of a log grid (100 per decade) and each TAR of a linear grid
    (steps of 1/500), plus both ends, so every kept point lies exactly on the full curve. Pass `thin=False` for all
    points (one per distinct score, plus the accept-nothing point).

    Example:
        >>> c = det_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], thin=False)
        >>> c.far.tolist(), c.frr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [1.0, 0.5, 0.5, 0.0, 0.0])
    """
    return _curve(_counts(*_check(scores, labels)), thin)


def accuracy_at(scores, labels, threshold: float) -> float:
    """Share of pairs decided correctly when accepting `score >= threshold` (e.g. the recipe's fixed 0.2).

    Example:
        >>> accuracy_at([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], 0.5)
        0.5
    """
    return _rates_at(*_check(scores, labels), float(threshold))[0]


def tar_at_far(scores, labels, fars: Sequence[float] = DEFAULT_FARS) -> dict[str, TarAtFar]:
    """TAR at each target FAR, keyed by `far_key(f)` ("0.01", "0.001", ...); see the module docstring for ties and
    for targets below 1 / n_negatives (TAR None).

    Example:
        >>> r = tar_at_far([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], fars=[0.5, 0.1])
        >>> r["0.5"].tar, r["0.5"].threshold, r["0.1"].tar        # 0.1 < 1/2 negatives: not measurable
        (1.0, 0.3, None)
    """
    return _tar_at_far(_counts(*_check(scores, labels)), fars)


def error_rates_by_type(
    scores, labels, types, threshold: float | None = None, *, type_names: Sequence[str] | None = None
) -> dict[str, TypeRates]:
    """Error rates per pair type at `threshold` (default: the bob EER threshold of these scores).

    Inputs: `types` has one entry per pair, either names (e.g. "same", "different", "own_fake") or integer codes with
    `type_names` (e.g. `curation.training.pairs.PAIR_KINDS`, so 10M codes need no string handling). Output: name -> TypeRates,
    names sorted (by code when coded).

    Example:
        >>> r = error_rates_by_type([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], ["same", "fake", "same", "different"], 0.5)
        >>> {k: (v.kind, v.rate) for k, v in r.items()}
        {'different': ('false_accept', 0.0), 'fake': ('false_accept', 1.0), 'same': ('false_reject', 0.5)}
    """
    s, y = _check(scores, labels)
    if threshold is None:
        threshold = _eer(_counts(s, y)).threshold
    return _by_type(s, y, types, type_names, float(threshold))


def verification_report(
    scores,
    labels,
    types=None,
    *,
    type_names: Sequence[str] | None = None,
    threshold: float | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
    curve: bool = True,
) -> VerificationReport:
    """All metrics at once from one sort: what evaluation, prediction and training validation report.

    Inputs: scores and labels as in `equal_error_rate`; optional `types` (and `type_names`) as in
    `error_rates_by_type`; `threshold`, the operating point of accuracy/FAR/FRR/per-type rates (default: the bob EER
    threshold; pass a validation set's threshold to see how it transfers); the target FARs; whether to include the
    thinned ROC/DET curve. Output: VerificationReport; `.to_dict()` is plain JSON, `.describe()` a readable summary.

    Example:
        >>> r = verification_report([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], ["same", "fake", "same", "different"])
        >>> r.eer, r.eer_threshold, r.eer_roc, r.per_type["fake"].rate
        (0.5, 0.8, 0.5, 1.0)
    """
    s, y = _check(scores, labels)
    c = _counts(s, y)
    e = _eer(c)
    op = e.threshold if threshold is None else float(threshold)
    acc, far, frr = _rates_at(s, y, op)
    roc = _roc_eer(c)
    return VerificationReport(
        n_pos=c.n_pos,
        n_neg=c.n_neg,
        eer=e.eer,
        eer_threshold=e.threshold,
        eer_far=e.far,
        eer_frr=e.frr,
        eer_roc=roc.eer,
        eer_roc_threshold=roc.threshold,
        threshold=op,
        threshold_source="eer" if threshold is None else "given",
        accuracy=acc,
        far=far,
        frr=frr,
        tar_at_far=_tar_at_far(c, fars),
        per_type=None if types is None else _by_type(s, y, types, type_names, op),
        curve=_curve(c, thin=True) if curve else None,
    )
