"""One sentence per flag saying which evidence made it, from the flag's `details` (what curation.flagging wrote).

Why one function: the identity page, flags.csv readers and the tests must say the same thing about a flag, and the
numbers must be the ones the decision used, not recomputed ones.

Example:
    >>> explain("minority", {"own_cosine": 0.86, "z": -4.2, "degree": 1, "nearest_identity": "Leonardo DiCaprio",
    ...                      "nearest_cosine": 0.93}, score=0.97)
    "P(wrong identity) 0.97: 0.86 to the folder's core photos (4.2 spreads below its typical photo), one edge, nearest other identity Leonardo DiCaprio 0.93"
"""
from __future__ import annotations

import json
import math


def _f(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _edges(n: int | None) -> str:
    if n is None:
        return ""
    return "no edge" if n == 0 else "one edge" if n == 1 else f"{n} edges"


def explain(kind: str, details: dict | str | None, score: float | None = None) -> str:
    """The reason for one flag, as plain text ("" when the details hold nothing to say).

    kind: the flag kind; details: the flag's details (a dict or its JSON text); score: the flag's score.
    """
    d = json.loads(details) if isinstance(details, str) else dict(details or {})
    if kind in ("outlier", "minority"):
        parts = []
        own, z = _f(d.get("own_cosine")), _f(d.get("z"))
        if own is not None:
            below = f" ({-z:.1f} spreads below its typical photo)" if z is not None and z < 0 else ""
            parts.append(f"{own:.2f} to the folder's core photos{below}")
        edges = _edges(d.get("degree"))
        if edges:
            parts.append(edges)
        near, cos = d.get("nearest_identity"), _f(d.get("nearest_cosine"))
        if d.get("group_size", 1) > 1:
            parts.append(f"one of a group of {d['group_size']} alike photos")
        joined = d.get("joined_group") or {}
        if _f(joined.get("best_to_group")) is not None and _f(joined.get("best_to_folder")) is not None:
            parts.append(f"closer to that group ({joined['best_to_group']:.2f}) than to the rest of its folder "
                         f"({joined['best_to_folder']:.2f})")
        if near and cos is not None:
            best = _f(d.get("nearest_best_photo"))
            photo = f" (its best photo {best:.2f})" if best is not None else ""
            parts.append(f"nearest other identity {near} {cos:.2f}{photo}")
        if d.get("not_in_dataset"):
            parts.append("it fits no identity of this dataset: not in this dataset, remove it")
        p = _f(score if score is not None else d.get("p_wrong"))
        head = f"P(wrong identity) {p:.2f}" if p is not None else kind
        return head + (": " + ", ".join(parts) if parts else "")
    if kind == "duplicate":
        other = d.get("duplicate_of")
        return f"a near copy (cosine {score:.3f}) of {other}" if other and score is not None else "a near copy"
    if kind == "merge" and d.get("ratio") is not None:
        return f"cross cosines {d['ratio']:.2f} of the way from strangers to the identities' own level"
    if kind == "split" and d.get("sizes"):
        return f"two groups of {d['sizes'][0]} and {d['sizes'][1]} photos that do not match"
    return ""
