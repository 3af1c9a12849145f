"""Queue: identities with open flags, the most worth reviewing first, filterable by flag kind, paginated."""
from __future__ import annotations

import streamlit as st

from curation import review as rv
from labels.vocab import FLAG_KINDS
from review_pages import common

PAGE_SIZE = 25


def _reset_offset() -> None:
    st.session_state.queue_offset = 0


def _move(delta: int) -> None:
    st.session_state.queue_offset = max(0, st.session_state.get("queue_offset", 0) + delta)


ORDER_HELP = {
    "worth": "worth: the errors that matter most first (severity of each open flag x how unsure it is)",
    "information": "information: the flags whose answers tell most about the rest first (score bands whose confirmed "
                   "rate is least certain, picked at random within a band), so that a small sample says how right the "
                   "open flags are; see the Overview",
}


def render(sess: common.Session) -> None:
    st.header("Review queue")
    st.session_state.setdefault("queue_kinds", [])
    st.session_state.setdefault("queue_order", "worth")
    left, right = st.columns([3, 2])
    kinds = left.multiselect("Flag kinds", FLAG_KINDS, key="queue_kinds", on_change=_reset_offset,
                             placeholder="all kinds")
    order = right.radio("Order", rv.ORDERS, key="queue_order", on_change=_reset_offset, horizontal=True)
    st.caption(ORDER_HELP[order])
    snap = common.queue(sess)
    if snap.total == 0:
        if kinds:
            st.success("No open flags of these kinds.")
        else:
            st.success("Nothing left to review: every flag has a decision. Export the cleaned labels from the Export page.")
        return
    offset = min(st.session_state.get("queue_offset", 0), (snap.total - 1) // PAGE_SIZE * PAGE_SIZE)
    st.session_state.queue_offset = offset
    page = rv.queue_page(sess.store, snap, offset=offset, limit=PAGE_SIZE)
    st.write(f"**{snap.total:,}** identities to review · showing {offset + 1:,}-{offset + len(page.rows):,}")
    info = "reason" in page.rows
    header = st.columns([1, 4, 1, 1, 4, 1])
    for col, title in zip(header, ["#", "identity", "sample" if info else "worth", "photos", "open flags", ""]):
        col.caption(title)
    for i, row in enumerate(page.rows.itertuples()):
        rank = offset + i
        cols = st.columns([1, 4, 1, 1, 4, 1], vertical_alignment="center")
        cols[0].write(f"{rank + 1}")
        cols[1].write(f"**{common.lit(row.identity)}**" + (" ← you were here" if row.identity == st.session_state.get("identity") else ""))
        cols[2].write(row.reason if info else f"{row.worth:.2f}")
        cols[3].write(f"{int(row.n_photos) if row.n_photos == row.n_photos else 0}")
        cols[4].write(row.open_flags)
        cols[5].button("Open", key=f"open_{rank}", on_click=common.open_identity, args=(row.identity, rank))
    prev, _, nxt = st.columns([1, 4, 1])
    prev.button("← Previous", key="queue_prev", disabled=offset == 0, on_click=_move, args=(-PAGE_SIZE,))
    nxt.button("Next →", key="queue_next", disabled=offset + PAGE_SIZE >= snap.total, on_click=_move,
               args=(PAGE_SIZE,))
    common.shortcuts({"n": (f"open_{offset}", "open the first of this page"), "arrowleft": ("queue_prev", "previous page"),
                      "arrowright": ("queue_next", "next page")})
