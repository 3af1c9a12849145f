"""The review app: browse the flags of the last clean and record decisions in the label store.

    streamlit run app.py -- --workdir WORK

Binds to 127.0.0.1 (see .streamlit/config.toml); Streamlit's XSRF protection stays on. A thin UI: every page calls
curation.review, the same functions the tests and scripts use (see review_pages/ for the page layouts).
"""
from __future__ import annotations

import sys

import streamlit as st

from labels.cli import UserError
from curation import review as rv
from labels.store import LabelStore, StoreError
from review_pages import common, evaluation, export, identity, overview, queue, search, training

PAGES = {
    "Overview": overview.render,
    "Queue": queue.render,
    "Identity": identity.render,
    "Search": search.render,
    "Export": export.render,
    "Training": training.render,
    "Evaluation": evaluation.render,
}
assert tuple(PAGES) == common.VIEWS


def ask_reviewer() -> str:
    """The reviewer's name, asked once per session (kept in the URL, so a reload does not ask again)."""
    name = (st.session_state.get("reviewer") or "").strip()
    if name:
        return name
    st.title("Face dataset review")
    st.write("Your name is recorded with every decision you make, so that others can see who decided what.")
    with st.form("reviewer_form"):
        typed = st.text_input("Reviewer name", key="reviewer_input", max_chars=80)
        if st.form_submit_button("Start reviewing", type="primary", key="reviewer_start") and typed.strip():
            st.session_state.reviewer = typed.strip()
            st.rerun()
    st.stop()


def forget_reviewer() -> None:
    for key in ("reviewer", "_position_restored", "_saved_position"):
        st.session_state.pop(key, None)
    st.query_params.clear()


def main() -> None:
    st.set_page_config(page_title="Face dataset review", page_icon=":material/face:", layout="wide")
    common.check_listening()
    try:
        args = common.parse_args(sys.argv[1:])
    except SystemExit as exc:
        st.error("Start the app with a work folder:")
        st.code(str(exc), language="text")
        st.stop()
    try:
        work = rv.WorkFolder.open(args.workdir)
    except UserError as exc:
        common.error_page(str(exc))
    if "store" not in st.session_state or st.session_state.get("store_root") != str(work.root):
        try:
            st.session_state.store = LabelStore.open(work.root)  # one connection per session
        except StoreError as exc:
            common.error_page(str(exc))
        st.session_state.store_root = str(work.root)
    common.restore_state()
    reviewer = ask_reviewer()
    sess = common.Session(work, st.session_state.store, reviewer)
    if not st.session_state.get("_position_restored"):
        common.restore_position(sess.store, reviewer)
        st.session_state._position_restored = True

    with st.sidebar:
        st.markdown(f"**{common.lit(work.root.name)}** · reviewing as **{common.lit(reviewer)}**")
        st.button("Change name", key="reviewer_change", type="tertiary", on_click=forget_reviewer)
        st.session_state.setdefault("nav", common.LANDING)
        st.radio("Page", common.VIEWS, key="nav", label_visibility="collapsed")
        st.divider()
        st.caption("Recent decisions")
        common.history_panel(sess)
    common.show_flash()
    try:
        PAGES[st.session_state.nav](sess)
    except UserError as exc:
        st.error(common.lit(exc))
    common.sync_position(sess)


# Streamlit runs this file as __main__; anything else importing it (a multiprocessing "spawn" child re-importing the
# parent's main module, a test) must not start the app.
if __name__ == "__main__":
    main()
