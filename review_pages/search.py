"""Search: identities by name, photos by file name or path; open the identity from a result."""
from __future__ import annotations

import streamlit as st

from curation import review as rv
from review_pages import common


def render(sess: common.Session) -> None:
    st.header("Search")
    text = st.text_input("Identity or file name", key="search_text", placeholder="e.g. Hugh or 0042.jpg")
    if not text.strip():
        st.caption("Type part of an identity name or of a file path (case-insensitive).")
        return
    hits = rv.search(sess.store, text)
    if hits.empty:
        st.info(f"Nothing matches {common.lit(repr(text.strip()))}.")
        return
    st.write(f"{len(hits)} match(es)" + (" (the first 50 of each kind)" if len(hits) >= 50 else ""))
    for i, hit in enumerate(hits.itertuples()):
        cols = st.columns([1, 4, 5, 2, 1], vertical_alignment="center")
        cols[0].caption(hit.match)
        cols[1].write(f"**{common.lit(hit.identity)}**")
        cols[2].write(common.lit(hit.path or ""))
        cols[3].write(f"{hit.n_open_flags} open flag(s)")
        cols[4].button("Open", key=f"search_open_{i}", on_click=common.open_identity, args=(hit.identity, 0))
