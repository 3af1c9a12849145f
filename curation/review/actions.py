"""A reviewer's actions (remove, move, mark fake, merge, keep, undo): each one `LabelStore.decide` or `undo`, or a
batch of them (`accept_suggestions`: one decision per photo, recorded together and undone together or one by one).

Why strict: a decision that a second reviewer (or a double click) already made is refused with the reason instead of
being recorded twice; every decision is written at once and can be undone.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from curation.review.identity import IdentityView
from labels.cli import UserError
from labels.store import DecisionRequest, LabelStore, StoreError, check_identity_name
from labels.vocab import AUTO_ACTIONS


@dataclass(frozen=True)
class Outcome:
    """A decision just recorded, with the line to show the reviewer."""

    decision_id: int
    message: str


_VERBS = {
    "remove": "removed", "restore": "restored", "mark_fake": "marked fake", "mark_real": "marked real",
    "move": "moved", "keep": "kept", "merge": "merged", "split": "split off",
}


def apply_action(
    store: LabelStore,
    action: str,
    *,
    reviewer: str,
    image_ids: Sequence[int] = (),
    flag_ids: Sequence[int] | None = None,
    identity: str | None = None,
    target_identity: str | None = None,
) -> Outcome:
    """Record one reviewer decision, at once, as one `LabelStore.decide` in strict mode.

    action: remove | restore | mark_fake | mark_real | move (target_identity) | keep (flag_ids: the flags shown, which
    it rejects) on `image_ids`; merge (identity into target_identity); split (image_ids of a component of `identity`
    go to the new identity target_identity, answering the identity's open split flags).
    flag_ids defaults to the open flags on the photos (the store's rule). A decision another reviewer already made
    meanwhile is refused with UserError naming that decision, so two sessions never record it twice.
    Example: `apply_action(store, "move", reviewer="ana", image_ids=[7], target_identity="Hugh Laurie")`.
    """
    store_action = "move" if action == "split" else action
    try:
        if action == "split":
            identity = check_identity_name(identity or "")
            target_identity = check_identity_name(target_identity or "")
            if store.identity_exists(target_identity):
                raise UserError(f"{target_identity!r} already exists: pick a new name, or move the photos instead")
            split_flags = store.flags(status="open", kind="split", identity=identity)
            photo_flags = store.flags(status="open", image_ids=list(image_ids)) if len(image_ids) else split_flags[:0]
            flag_ids = sorted({*split_flags.id.tolist(), *photo_flags.id.tolist()})
        did = store.decide(
            store_action, reviewer=reviewer, image_ids=image_ids, identity=identity, target_identity=target_identity,
            flag_ids=flag_ids, note="split" if action == "split" else "", strict=True,
        )
    except (StoreError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    n = len(image_ids)
    n_flags = len(store.decision(did).flag_ids)
    what = {
        "merge": f"merged {identity} into {target_identity}",
        "keep": f"kept {n} photo(s), rejecting {n_flags} flag(s)" if n else f"rejected {n_flags} flag(s)",
        "move": f"moved {n} photo(s) to {target_identity}",
        "split": f"split {n} photo(s) off {identity} into {target_identity}",
    }.get(action, f"{_VERBS.get(action, action)} {n} photo(s)")
    return Outcome(did, f"#{did}: {what}")


def undo_decision(store: LabelStore, decision_id: int, *, reviewer: str) -> Outcome:
    """Reverse one decision with a new one; UserError (with the reason) when the store refuses."""
    try:
        did = store.undo(int(decision_id), reviewer=reviewer)
    except StoreError as exc:
        raise UserError(str(exc)) from exc
    return Outcome(did, f"#{did}: undid #{decision_id}")


def split_name(store: LabelStore, identity: str, component: int) -> str:
    """A free identity name for a component split off `identity`: `<identity>_split<component>[_<n>]`."""
    base = f"{identity}_split{component}"
    name, n = base, 1
    while store.identity_exists(name):
        n += 1
        name = f"{base}_{n}"
    return name


def history_lines(store: LabelStore, *, limit: int = 15, identity: str | None = None, grouped: bool = True) -> list[dict]:
    """Recent decisions for the history panel, newest first: id, ids (the decisions of the line: one, or a batch when
    `grouped`), text, whether the store would undo them now (`undoable`) and, when a later live decision on the same
    photos stands in the way, that decision's id (`blocked_by`)."""
    lines: list[dict] = []
    for d in store.history(limit=limit, identity=identity):
        blocked = d.blocked_by if d.action != "undo" and d.undone_by is None else None
        last = lines[-1] if lines else None
        if grouped and d.batch is not None and last is not None and last["batch"] == d.batch:
            last["ids"].append(d.id)
            last["decisions"].append(d)
            last["undoable"] = last["undoable"] and d.undoable
            last["blocked_by"] = max(filter(None, (last["blocked_by"], blocked)), default=None)
            continue
        lines.append({"id": d.id, "ids": [d.id], "decisions": [d], "batch": d.batch, "undoable": d.undoable,
                      "blocked_by": blocked})
    for line in lines:
        decisions = line.pop("decisions")
        line["text"] = decisions[0].describe() if len(decisions) == 1 else _describe_batch(decisions)
        if len(decisions) > 1:  # a later decision of the same batch does not block: undo_many reverses the lot
            inside = set(line["ids"])
            outside = [d.blocked_by for d in decisions if d.blocked_by and d.blocked_by not in inside]
            line["blocked_by"] = max(outside, default=None)
            line["undoable"] = all(d.action != "undo" and d.undone_by is None for d in decisions) and not outside
    return lines


def _describe_batch(decisions) -> str:
    """'#12-#17 2026-01-02 10:00:00 ana: 6 decisions together (4 remove, 2 move)', decisions newest first."""
    first, last = decisions[-1], decisions[0]
    counts = Counter(d.action.replace("_", " ") for d in decisions)
    what = ", ".join(f"{n} {a}" for a, n in counts.most_common())
    undone = " [undone]" if all(d.undone_by for d in decisions) else ""
    return (f"#{first.id}-#{last.id} {first.ts[:19].replace('T', ' ')} {first.reviewer}: {len(decisions)} decisions "
            f"together ({what}){undone}")


def undo_decisions(store: LabelStore, decision_ids: Sequence[int], *, reviewer: str) -> Outcome:
    """Undo a batch (or any set) of decisions at once, newest first; UserError (with the reason) when refused."""
    try:
        undos = store.undo_many(decision_ids, reviewer=reviewer)
    except StoreError as exc:
        raise UserError(str(exc)) from exc
    ids = sorted(int(d) for d in decision_ids)
    return Outcome(undos[0], f"#{min(undos)}-#{max(undos)}: undid {len(ids)} decisions (#{ids[0]}-#{ids[-1]})")


# Flags that say something is wrong with the photo itself: accepting them removes it, whatever else it is flagged for.
PHOTO_PROBLEMS = ("duplicate", "unreadable", "no_face", "fake_mismatch")


@dataclass(frozen=True)
class Suggestion:
    """What the open flags of one photo propose (see `suggestions`)."""

    image_id: int
    action: str  # remove | move | keep
    target_identity: str | None
    flag_ids: tuple[int, ...]
    why: str


def suggestions(view: IdentityView) -> tuple[list[Suggestion], list[int]]:
    """The action each flagged photo of an identity page proposes, and the photos left for a person.

    Per photo with open flags (removed photos are left alone): remove when a flag says the photo itself is a problem
    (PHOTO_PROBLEMS); else move when the flags suggest one other identity; keep when a flag's suggestion is the
    identity the photo is in ("looks like it belongs here"); else what `export --unreviewed apply` would do
    (labels.vocab.AUTO_ACTIONS: remove). Photos whose flags suggest two different identities need a person.
    Identity-level proposals (merge, split) are not included: they relabel whole identities.
    Returns (suggestions in display order, image ids left for a person).
    """
    out, left = [], []
    for image_id, removed, flags in zip(view.photos.image_id, view.photos.removed, view.photos.flag_list):
        flags = [f for f in flags if f["status"] == "open"]
        if not flags or removed:
            continue
        ids = tuple(sorted(f["id"] for f in flags))
        kinds = sorted({f["kind"] for f in flags})
        elsewhere = {f["suggested_identity"] for f in flags if f["suggested_identity"]} - {view.identity}
        here = any(f["suggested_identity"] == view.identity for f in flags)
        problem = [k for k in kinds if k in PHOTO_PROBLEMS]
        if problem:
            out.append(Suggestion(int(image_id), "remove", None, ids, f"{problem[0]}: remove"))
        elif len(elsewhere) == 1:
            target = next(iter(elsewhere))
            out.append(Suggestion(int(image_id), "move", target, ids, f"{kinds[0]}: move to {target}"))
        elif len(elsewhere) > 1:
            left.append(int(image_id))
        elif here:
            out.append(Suggestion(int(image_id), "keep", None, ids, "looks like it belongs here: keep"))
        elif all(AUTO_ACTIONS.get(k) == "remove" for k in kinds):
            out.append(Suggestion(int(image_id), "remove", None, ids, f"{kinds[0]}: remove"))
        else:
            left.append(int(image_id))
    return out, left


def accept_suggestions(store: LabelStore, view: IdentityView, *, reviewer: str) -> Outcome:
    """Apply every photo's suggestion (`suggestions`) on an identity page as one batch of decisions, one per photo.

    All or none, in strict mode: when another reviewer answered one of the flags meanwhile, nothing is recorded and
    the message names that decision (reload and accept again). Each decision can be undone on its own, or the batch
    with `undo_decisions`.
    """
    proposed, left = suggestions(view)
    if not proposed:
        raise UserError("no suggestion to accept on this page" + (f" ({len(left)} photo(s) need a person)" if left else ""))
    requests = [DecisionRequest(s.action, (s.image_id,), target_identity=s.target_identity, flag_ids=s.flag_ids,
                                note="accept all suggestions") for s in proposed]
    try:
        ids = store.decide_many(requests, reviewer=reviewer, strict=True)
    except StoreError as exc:
        raise UserError(str(exc)) from exc
    counts = Counter(s.action if s.action != "move" else f"moved to {s.target_identity}" for s in proposed)
    verbs = {"remove": "removed", "keep": "kept"}
    what = ", ".join(f"{n} {verbs.get(a, a)}" for a, n in counts.most_common())
    rest = f"; {len(left)} photo(s) left for you" if left else ""
    return Outcome(ids[0], f"#{ids[0]}-#{ids[-1]}: accepted the suggestions on {len(ids)} photo(s) ({what}){rest}")


def keep_all(store: LabelStore, view: IdentityView, *, reviewer: str) -> Outcome:
    """Reject every open flag on an identity page (photos' flags and the identity's split/merge proposals): one keep."""
    photos = [int(i) for i in view.flagged_ids()]
    flag_ids = view.open_flag_ids(photos) + [int(f) for f in view.identity_flags.id]
    if not flag_ids:
        raise UserError("no open flag on this page")
    return apply_action(store, "keep", reviewer=reviewer, image_ids=photos, flag_ids=flag_ids)
