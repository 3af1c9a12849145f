"""A reviewer's actions (remove, move, mark fake, merge, keep, undo): each one `LabelStore.decide` or `undo`.

Why strict: a decision that a second reviewer (or a double click) already made is refused with the reason instead of
being recorded twice; every decision is written at once and can be undone.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labels.cli import UserError
from labels.store import LabelStore, StoreError, check_identity_name


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


def history_lines(store: LabelStore, *, limit: int = 15, identity: str | None = None) -> list[dict]:
    """Recent decisions for the history panel: id, text, whether the store would undo it now (`undoable`) and, when a
    later live decision on the same photos stands in the way, that decision's id (`blocked_by`)."""
    return [
        {"id": d.id, "text": d.describe(), "undoable": d.undoable,
         "blocked_by": d.blocked_by if d.action != "undo" and d.undone_by is None else None}
        for d in store.history(limit=limit, identity=identity)
    ]
