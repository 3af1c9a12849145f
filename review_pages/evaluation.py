"""Evaluation: metrics, ROC/DET and per-type error rates of `curation.evaluate --out DIR` runs, side by side."""
from __future__ import annotations

import streamlit as st

from curation import review as rv
from review_pages import common
from review_pages.runs import pick_runs


def render(sess: common.Session) -> None:
    st.header("Evaluation")
    runs = pick_runs(sess, marker=rv.METRICS_FILE, subdir="eval", key="eval", multiple=True)
    if not runs:
        st.info(
            f"No evaluation under {common.lit(sess.work.root / 'eval')} yet. Score a model on verification pairs with\n\n"
            + common.code(f"python -m curation.evaluate --model MODEL --pairs PAIRS.csv --root IMAGES --out "
                          f"{sess.work.root / 'eval' / 'NAME'}")
            + "\n\nor a submission with `--scores SUBMISSION.csv --truth TRUTH.csv --out ...`, and it appears here."
        )
        return
    table, metrics = rv.evaluation_table(runs)
    st.dataframe(table, key="eval_table")
    figs = rv.evaluation_figures(metrics)
    left, right = st.columns(2)
    for col, name in ((left, "roc"), (right, "det")):
        if name in figs:
            col.plotly_chart(figs[name], key=f"eval_{name}")
    if "per_type" in figs:
        st.plotly_chart(figs["per_type"], key="eval_per_type")
    if len(runs) == 1:
        name, m = next(iter(metrics.items()))
        fig = rv.scores_figure(runs[0], threshold=m.get("threshold"))
        if fig is not None:
            st.plotly_chart(fig, key="eval_scores")
