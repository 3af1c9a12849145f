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
    _estimate(ov)
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
    _throughput(ov)


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{x:.1%}"


def _estimate(ov: rv.Overview) -> None:
    """What the answers so far say about the open flags: precision, real errors among them, rates per band."""
    st.subheader("How right are the open flags?")
    e = ov.estimate
    if e.precision is None:
        st.info(f"No reviewed sample yet: answer a few flags (the Queue's **information** order picks the ones that "
                f"tell most) and the estimated precision of the {e.n_flags:,} open flags appears here.")
        return
    cols = st.columns(3)
    cols[0].metric("Estimated precision of the open flags", _pct(e.precision),
                   help=f"95% interval {_pct(e.low)} - {_pct(e.high)}, from {e.n_reviewed:,} answered flags, "
                        "stratified by flag kind and score band")
    cols[1].metric("Real errors among them (estimate)", f"{e.right:,.0f}",
                   help=f"95% interval {e.right_low:,.0f} - {e.right_high:,.0f} of {e.n_flags:,} open flags")
    cols[2].metric("Answers it rests on", f"{e.n_reviewed:,}")
    st.caption(f"{e.describe()} · 95% interval of the real errors: {e.right_low:,.0f}-{e.right_high:,.0f} of "
               f"{e.n_flags:,} open flags. `export --unreviewed apply` states the same estimate for what it applies.")
    per_kind = e.per_kind.assign(
        precision=[_pct(x) + ("" if n else " (borrowed: no answer of this kind yet)")
                   for x, n in zip(e.per_kind.precision, e.per_kind.n_reviewed)],
        interval=[f"{_pct(lo)}-{_pct(hi)}" if lo is not None and lo == lo else "-" for lo, hi in
                  zip(e.per_kind.low, e.per_kind.high)],
        real_errors=[f"{x:,.0f}" if x is not None and x == x else "-" for x in e.per_kind.right],
    )[["kind", "n_flags", "n_reviewed", "precision", "interval", "real_errors"]]
    st.dataframe(per_kind.rename(columns={"n_flags": "open flags", "n_reviewed": "answered",
                                          "real_errors": "real errors (est.)"}), hide_index=True, key="estimate_table")
    fig = rv.rates_figure(ov)
    if fig is not None:
        st.plotly_chart(fig, key="rates_chart")
    with st.expander("Confirmed rate per kind and score band"):
        st.dataframe(rv.rates_table(ov), hide_index=True, key="rates_table")


def _throughput(ov: rv.Overview) -> None:
    st.subheader("Reviewer throughput")
    t = ov.throughput
    if t.empty:
        st.caption("No decisions yet.")
        return
    st.caption("Decisions per minute of review time (pauses over 5 minutes between two decisions do not count).")
    st.dataframe(t.rename(columns={"decisions_today": "today", "per_minute_today": "per minute today",
                                   "per_minute": "per minute overall", "minutes": "review minutes"}),
                 hide_index=True, key="throughput_table",
                 column_config={c: st.column_config.NumberColumn(format="%.1f")
                                for c in ("per minute today", "per minute overall", "review minutes")})
