"""Picking run folders for the Training and Evaluation pages: the ones under WORK, or one typed (kept under WORK or
the current directory)."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from labels.cli import UserError
from curation import review as rv
from review_pages import common


def pick_runs(sess: common.Session, *, marker: str, subdir: str, key: str, multiple: bool) -> list[Path]:
    """Runs found under WORK/<subdir> plus a folder typed in a text box; returns the chosen ones."""
    found = rv.find_runs(sess.work, marker, subdir)
    typed = st.text_input(f"Another folder holding {marker}", key=f"{key}_folder",
                          placeholder=str(sess.work.root / subdir / "NAME"))
    if typed.strip():
        try:
            extra = rv.contained_folder(typed, work=sess.work)
        except UserError as exc:
            st.error(common.lit(exc))
        else:
            if (extra / marker).is_file():
                found = [extra, *[p for p in found if p != extra]]
            else:
                st.warning(f"{common.lit(extra)} holds no {marker}.")
    if not found:
        return []
    label = lambda p: str(p.relative_to(sess.work.root)) if p.is_relative_to(sess.work.root) else str(p)  # noqa: E731
    if multiple:
        return st.multiselect("Runs", found, default=found[:2], format_func=label, key=f"{key}_runs")
    return [st.selectbox("Run", found, format_func=label, key=f"{key}_run")]
