"""One probability per photo that it is filed under the wrong identity, from curation.flagging.evidence.

Why a fitted model and not hand-set thresholds: what a cosine means depends on the embedder and on the dataset (dlib
puts strangers at 0.8, AdaFace near 0), and how far "unusual for this folder" (z) and "closer to another identity"
(margin) should each count is an empirical matter. So both sides are taken from the data itself:

- impostors are *simulated*: photos are moved, on paper, into a random other identity, into their nearest other
  identity (a lookalike), and into a random identity with their own person gone from the dataset (an outsider), and
  their features are recomputed as they would read there. No photo is touched; every cosine needed is already in the
  evidence or is one dot product with a centroid. (An outsider filed under its most similar identity looks like a
  genuine hard photo, so it is not a case to learn from.);
- the other side is the dataset's own photos: mostly genuine, partly wrong (positive-unlabelled learning).

Per kind of move, in turn, a sign-constrained logistic g(f) = P(simulated | f) is fitted against the photos the earlier
kinds leave unexplained (the last, outsiders, then refitted against 1 - P(wrong) of the whole model, so the dataset's
hard wrong photos do not count as genuine); Elkan & Noto (2008): with c = mean g over the simulated photos, P(wrong | f)
= (1 - c) / c * g / (1 - g), capped at 1. A photo's probability is the largest over the kinds (one linear boundary per
kind: "wrong" is an OR of them). A second logistic, on simulated moved photos vs simulated outsiders, gives P(the person
has no folder) from how well a flagged photo fits its nearest other identity and how far that identity stands out from
the next.

Example:
    >>> model, p = fit_model(ev, emb, codes, judged_rows)
    >>> p_again = model.probability(photo_features(ev, codes, judged_rows))
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from curation.flagging.calibrate import rowwise_dot
from curation.flagging.evidence import Evidence

FEATURES = ("z", "margin", "z_other")  # see features
SIGNS = (-1, 1, 1)  # the direction each feature may push towards "wrong": a fit against it is noise, and is dropped
CLIP = 40.0
N_SIMULATED = 20_000  # core photos moved on paper per kind of move
RIDGE = 1e-3
MAX_FIT = 100_000  # dataset photos the logistics are fitted on (a random sample beyond it)
EM_ROUNDS = 3  # refits of the outsider kind against 1 - P(wrong) of the whole model (see fit_model)


@dataclass
class MislabelModel:
    """Per kind of simulated move, logistic weights (over FEATURES + intercept) of the log ratio; the prior."""

    coef: list[list[float]]
    prior: float
    outsider_coef: list[float]  # logistic over outsider_features: P(a wrong photo's person is in no folder)
    n_simulated: int
    n_genuine: int

    def log_ratio(self, x: np.ndarray) -> np.ndarray:
        """The largest log ratio over the kinds of move (see fit_model)."""
        c = np.asarray(self.coef)
        return (x @ c[:, :-1].T + c[:, -1]).max(1)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(wrong identity) per feature row: exp(log ratio) capped at 1 (NaN rows -> NaN)."""
        return np.exp(np.minimum(self.log_ratio(x), 0.0)).astype(np.float32)

    def outsider(self, x: np.ndarray) -> np.ndarray:
        """P(the person is in no folder) per row of outsider_features."""
        c = np.asarray(self.outsider_coef)
        return 1 / (1 + np.exp(-np.clip(x @ c[:-1] + c[-1], -50, 50)))

    def to_dict(self) -> dict:
        return asdict(self) | {"features": list(FEATURES)}


def features(z: np.ndarray, own: np.ndarray, other: np.ndarray, z_other: np.ndarray, unit: float) -> np.ndarray:
    """[n, 3] float64: z (fit to the folder in its own spread), margin = (other - own) in `unit`s (the dataset's
    typical spread, so the numbers compare across embedders) and z_other (how genuine the photo would look in its
    nearest other identity), each clipped to +-CLIP. A missing other identity reads as a far one."""
    margin = np.where(np.isfinite(other), (other - own) / unit, -CLIP)
    zo = np.where(np.isfinite(z_other), z_other, -CLIP)
    out = np.stack([z, margin, zo], 1)
    return np.clip(np.nan_to_num(out, nan=-CLIP), -CLIP, CLIP)


def photo_features(ev: Evidence, codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The features of `rows` as they are filed."""
    return features(ev.z[rows], ev.own[rows], ev.other[rows], ev.z_at(ev.other[rows], ev.other_code[rows]), ev.unit)


def _best_two(ev: Evidence, codes: np.ndarray, rows: np.ndarray, to: np.ndarray, keep_home: bool):
    """Per row, the two best identities other than `to` among its own (if keep_home) and its nearest others:
    (best cosine, its code, second cosine); -inf / -1 where missing."""
    cands = [(ev.other, ev.other_code), (ev.second, ev.second_code), (ev.third, ev.third_code)]
    if keep_home:
        cands.insert(0, (ev.own, codes))
    cos = np.stack([c[rows] for c, _ in cands], 1).astype(np.float64)
    code = np.stack([k[rows] for _, k in cands], 1)
    cos = np.where(np.isfinite(cos) & (code >= 0) & (code != to[:, None]), cos, -np.inf)
    order = np.argsort(-cos, axis=1, kind="stable")[:, :2]
    top = np.take_along_axis(cos, order, 1)
    return top[:, 0], np.take_along_axis(code, order, 1)[:, 0], top[:, 1]


def outsider_features(z_best: np.ndarray, best: np.ndarray, second: np.ndarray, unit: float) -> np.ndarray:
    """[n, 2]: how genuine a wrong photo looks in its best other identity (z), and how far that identity stands out
    from the next one (in units): a moved photo's own person stands out, an outsider's nearest strangers do not."""
    gap = np.where(np.isfinite(second) & np.isfinite(best), (best - second) / unit, CLIP)
    return np.clip(np.nan_to_num(np.stack([z_best, gap], 1), nan=-CLIP), -CLIP, CLIP)


def simulated_impostors(ev: Evidence, emb: np.ndarray, codes: np.ndarray, *, n: int = N_SIMULATED,
                        seed: int = 0) -> np.ndarray:
    """Features of core photos moved on paper: to a random identity / to their nearest other identity, with their own
    identity kept (a mislabelled photo) or not (an outsider). [<= 4n, 4]."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(np.isfinite(ev.own) & (ev.other_code >= 0))
    if len(pool) == 0 or len(ev.cent_codes) < 3:
        return []
    rows = rng.choice(pool, min(n, 20 * len(pool)), replace=len(pool) < n)  # a small set: each photo moved often
    rand = ev.cent_codes[rng.integers(0, len(ev.cent_codes), len(rows))]
    clash = rand == codes[rows]
    rand[clash] = ev.other_code[rows[clash]]
    cent_row = np.full(len(ev.level), -1, np.int64)
    cent_row[ev.cent_codes] = np.arange(len(ev.cent_codes))
    cos_rand = rowwise_dot(emb, rows, ev.centroids, cent_row[rand])
    near, cos_near = ev.other_code[rows], ev.other[rows]
    # an outsider filed under its most similar identity looks like a genuine hard photo: not a case to learn from
    moves = [(rand, cos_rand, True), (near, cos_near, True), (rand, cos_rand, False)]
    out = []
    for to, cos, home in moves:
        best, best_c, second = _best_two(ev, codes, rows, to, home)
        best = np.where(np.isfinite(best), best, np.nan)
        z_best = ev.z_at(best, best_c)
        out.append((features(ev.z_at(cos, to), cos, best, z_best, ev.unit),
                    outsider_features(z_best, best, np.where(np.isfinite(second), second, np.nan), ev.unit)))
    return out


def _logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, signs=SIGNS) -> np.ndarray:
    """Weighted logistic regression whose coefficients keep SIGNS (a feature fitted against its sign is dropped and
    the rest refitted); returns [coef..., intercept]."""
    use = np.ones(x.shape[1], bool)
    while True:
        beta = np.zeros(x.shape[1] + 1)
        beta[np.append(use, True)] = _newton(x[:, use], y, w)
        bad = use & (np.sign(beta[:-1]) * np.asarray(signs) < 0)
        if not bad.any():
            return beta
        use &= ~bad


def _newton(x: np.ndarray, y: np.ndarray, w: np.ndarray, iters: int = 30) -> np.ndarray:
    """Weighted, slightly ridged logistic regression by Newton's method; returns [coef..., intercept]."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    beta = np.zeros(xb.shape[1])
    ridge = RIDGE * w.sum() * np.eye(xb.shape[1])
    ridge[-1, -1] = 0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(xb @ beta, -50, 50)))
        g = xb.T @ (w * (p - y)) + ridge @ beta
        h = (xb * (w * p * (1 - p))[:, None]).T @ xb + ridge
        step = np.linalg.lstsq(h, g, rcond=None)[0]  # singular when a feature is constant (identical photos)
        beta -= step
        if np.abs(step).max() < 1e-6:
            break
    return beta


def _p_wrong(x: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """exp(log ratio) capped at 1, per row of features `x`, for one kind's weights."""
    return np.exp(np.minimum(x @ beta[:-1] + beta[-1], 0.0))


def _fit_kind(genuine: np.ndarray, weight: np.ndarray, imp: np.ndarray) -> np.ndarray:
    """One kind's log-ratio weights: a logistic of the simulated `imp` against the dataset's photos `genuine`
    (weighted by `weight`, the share of each still taken for genuine), then Elkan & Noto's correction: with c = mean
    g over the simulated ones, log ratio = logit g + log((1 - c) / c)."""
    x = np.vstack([genuine, imp])
    y = np.concatenate([np.zeros(len(genuine)), np.ones(len(imp))])
    w = np.concatenate([weight, np.full(len(imp), weight.sum() / len(imp))])
    beta = _logistic(x, y, w)
    g_imp = 1 / (1 + np.exp(-np.clip(imp @ beta[:-1] + beta[-1], -50, 50)))
    c = float(np.clip(g_imp.mean(), 1e-6, 1 - 1e-6))
    beta[-1] += np.log((1 - c) / c)
    return beta


def fit_model(ev: Evidence, emb: np.ndarray, codes: np.ndarray, rows: np.ndarray, *, seed: int = 0) -> tuple[
        MislabelModel, np.ndarray]:
    """Fit the model on the judged `rows` (valid real photos of identities with 2+ photos).

    Positive-unlabelled learning (Elkan & Noto 2008), once per kind of simulated move: a logistic g(f) = P(simulated |
    f) is fitted on those impostors against the dataset's photos (mostly genuine, partly wrong); with c = mean g over
    the simulated ones, P(wrong | f) = (1 - c) / c * g / (1 - g), capped at 1. A photo's probability is the largest
    over the kinds (a wrong photo is one kind of wrong or another; one boundary per kind, not one for all).
    Returns (model, probability per row of `rows`). With fewer than three identities there is nothing to simulate: the
    model falls back to the fit to the folder alone (z), one spread = one unit of log ratio.
    """
    genuine = photo_features(ev, codes, rows)
    kinds = simulated_impostors(ev, emb, codes, seed=seed)
    if not kinds or len(genuine) == 0:
        model = MislabelModel([[-1.0, 0.0, 0.0, -4.0]], 0.0, [0.0, 0.0, -10.0], 0, len(genuine))
        return model, model.probability(genuine)
    rng = np.random.default_rng(seed)
    if len(genuine) > MAX_FIT:  # a million photos: fit on a random sample of them, weighted back to the whole
        fit_rows = rng.choice(len(genuine), MAX_FIT, replace=False)
        all_genuine, genuine = genuine, genuine[fit_rows]
    else:
        all_genuine = genuine
    coefs = []
    explained = np.zeros(len(genuine))  # P(wrong) by the kinds fitted so far: out of the next kind's genuine side
    for imp, _ in kinds:
        beta = _fit_kind(genuine, 1 - explained, imp)
        coefs.append(beta)
        explained = np.maximum(explained, _p_wrong(genuine, beta))
    # The outsider kind is fitted last, against what the two moves leave unexplained; but hard wrong photos the
    # moves miss are then still on its genuine side and pull its boundary past them. So it is refitted a few
    # times (EM-style) against the photos weighted by 1 - P(wrong) of the whole model, itself included.
    for _ in range(EM_ROUNDS):
        p_all = np.max([_p_wrong(genuine, b) for b in coefs], axis=0)
        coefs[-1] = _fit_kind(genuine, 1 - p_all, kinds[-1][0])
    coefs = [b.tolist() for b in coefs]
    inside, outside = kinds[0][1], kinds[2][1]
    xo = np.vstack([inside, outside])
    yo = np.concatenate([np.zeros(len(inside)), np.ones(len(outside))])
    out_coef = _logistic(xo, yo, np.ones(len(xo)), signs=(-1, -1)).tolist()
    model = MislabelModel(coefs, 0.0, out_coef, sum(len(k[0]) for k in kinds), len(all_genuine))
    p = model.probability(all_genuine)
    model.prior = float(p.mean())
    return model, p
