"""Picking run folders for the Training and Evaluation pages: the ones under WORK, or one typed (kept under WORK or
the current directory)."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from labels.cli import UserError
from curation import review as rv
from review_pages import common


# Per kind of run (its folder under WORK): what is missing, the command that makes one ({work}: WORK, {folder}:
# WORK/<subdir>) and what the page shows once there is one.
_HINTS = {
    "eval": (
        "evaluation",
        "python -m curation.evaluate --model MODEL --pairs PAIRS.csv --root IMAGES --out {folder}/NAME",
        "Score a model on verification pairs like this, or a submission with `--scores SUBMISSION.csv --truth "
        "TRUTH.csv --out ...`, and it appears here.",
    ),
    "runs": (
        "training run",
        "python -m curation.train_on_clean {work} --init CHECKPOINT --out {folder}/NAME",
        "Fine-tune on the reviewed labels like this, and its loss and EER curves appear here (refresh while it runs).",
    ),
}


def runs_page(sess: common.Session, title: str, *, marker: str, subdir: str, key: str, multiple: bool) -> list[Path]:
    """The top of the Training and Evaluation pages: the header, then the chosen runs; when there are none, a hint
    that says how to make one. Returns the chosen runs ([] when none)."""
    st.header(title)
    runs = pick_runs(sess, marker=marker, subdir=subdir, key=key, multiple=multiple)
    if not runs:
        missing, command, then = _HINTS[subdir]
        folder = sess.work.root / subdir
        st.info(f"No {missing} under {common.lit(folder)} yet.\n\n"
                + common.code(command.format(work=sess.work.root, folder=folder)) + f"\n\n{then}")
    return runs


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
