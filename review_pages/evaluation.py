"""Evaluation: metrics, ROC/DET and per-type error rates of `curation.evaluate --out DIR` runs, side by side."""
from __future__ import annotations

import streamlit as st

from curation import review as rv
from review_pages import common
from review_pages.runs import runs_page


def render(sess: common.Session) -> None:
    runs = runs_page(sess, "Evaluation", marker=rv.METRICS_FILE, subdir="eval", key="eval", multiple=True)
    if not runs:
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
