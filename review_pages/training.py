"""Training: loss, validation EER and per-type error curves of fine-tuning runs (RUN/performance_history.json)."""
from __future__ import annotations

import streamlit as st

from curation import review as rv
from review_pages import common
from review_pages.runs import runs_page


def render(sess: common.Session) -> None:
    runs = runs_page(sess, "Training", marker=rv.HISTORY_FILE, subdir="runs", key="train", multiple=False)
    if not runs:
        return
    history = rv.read_history(runs[0])
    if history.empty:
        st.info(f"{common.lit(runs[0])} has no validation record yet: the first one comes after the first validation.")
        return
    last = history.iloc[-1]
    best = history.loc[history.eer.idxmin()] if "eer" in history else None
    cols = st.columns(3)
    cols[0].metric("Validations", len(history), help=f"last at step {int(last.step):,}")
    if best is not None:
        cols[1].metric("Best EER", f"{best.eer:.4f}", help=f"step {int(best.step):,}")
        cols[2].metric("Last EER", f"{last.eer:.4f}", delta=f"{last.eer - best.eer:+.4f}", delta_color="inverse")
    for name, fig in rv.training_figures(history).items():
        st.plotly_chart(fig, key=f"train_{name}")
    with st.expander("All validation records"):
        st.dataframe(history, hide_index=True)
