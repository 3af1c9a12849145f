"""Overview: flags per kind, review progress, the estimated noise rate, thresholds and the similarity histogram."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from curation import review as rv
from review_pages import common


@st.cache_resource(show_spinner=False, max_entries=8)
def _overview(_sess: common.Session, root: str, version: tuple, clean_version: tuple) -> rv.Overview:
    """Counting a million photos takes a few hundred ms: once per store version, not once per rerun."""
    return rv.overview(_sess.store, common.report(_sess.work))


def render(sess: common.Session) -> None:
    st.header("Overview")
    report = common.report(sess.work)
    if not report:
        st.info(f"No clean yet: run {common.code(f'python -m curation.clean DATA --workdir {sess.work.root}')} to flag this"
                " dataset.")
    ov = _overview(sess, str(sess.work.root), sess.store.version(), rv.clean_version(sess.work))
    total = ov.n_open + ov.n_reviewed
    cols = st.columns(5)
    cols[0].metric("Photos", f"{ov.n_photos:,}", help=f"{ov.n_removed:,} removed by decisions")
    cols[1].metric("Identities", f"{ov.n_identities:,}")
    cols[2].metric("Flags reviewed", f"{ov.n_reviewed:,} / {total:,}")
    cols[3].metric("Open flags", f"{ov.n_open:,}")
    noise = ov.summary.noise_rate
    cols[4].metric("Estimated noise rate", "-" if noise is None else f"{noise:.1%}")
    if total:
        st.progress(ov.n_reviewed / total, text=f"{ov.n_reviewed / total:.0%} of flags reviewed ({ov.n_decisions:,} decisions)")
    left, right = st.columns(2)
    left.plotly_chart(rv.flag_counts_figure(ov), key="flag_counts_chart")
    hist = rv.similarity_histogram_figure(ov.summary)
    if hist is None:
        right.info("No similarity histogram in report.json (written by `python -m curation.clean`).")
    else:
        right.plotly_chart(hist, key="similarity_histogram_chart")
    if ov.summary.thresholds:
        st.subheader("Thresholds in use")
        rows = [{"threshold": name, "value": value, "how it was chosen": ov.summary.how.get(name, "")}
                for name, value in ov.summary.thresholds.items()]
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="thresholds_table")
    st.subheader("Flags per kind")
    st.dataframe(ov.flag_counts.rename(columns={"resolved": "answered"}), hide_index=True, key="flag_counts_table")
