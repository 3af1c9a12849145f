"""Export: write the cleaned labels (labels.export) with its options, and show where they went."""
from __future__ import annotations

import streamlit as st

from labels.cli import UserError
from curation import review as rv
from labels.export import ExportError, export
from review_pages import common

FORMATS = {
    "folders": "OUT/<identity>/<file> (hard links where possible) + meta.json",
    "meta": "the challenge layout: OUT/images/<identity>/<n>.jpg + meta.json",
    "csv": "OUT/labels.csv, paths relative to the dataset",
}
UNREVIEWED = {"keep": "keep: open flags change nothing", "apply": "apply: open flags act as the cleaner proposed"}


def render(sess: common.Session) -> None:
    st.header("Export cleaned labels")
    st.caption(f"The same as {common.code(f'python -m labels.export {sess.work.root} --out OUT --format FMT --unreviewed POLICY')}. "
               "The source photos are never modified.")
    fmt = st.selectbox("Format", list(FORMATS), format_func=lambda f: f"{f}: {FORMATS[f]}", key="export_format")
    unreviewed = st.radio("Flags nobody has reviewed yet", list(UNREVIEWED), format_func=UNREVIEWED.get,
                          key="export_unreviewed")
    st.session_state.setdefault("export_out", str(sess.work.root / "export"))
    out_text = st.text_input("Output folder (under the work folder or the current directory)", key="export_out")
    overwrite = st.checkbox("Replace an existing export in that folder", key="export_overwrite")
    if not st.button("Export", type="primary", key="export_run"):
        return
    try:
        out = rv.contained_folder(out_text, work=sess.work)
    except UserError as exc:
        st.error(common.lit(exc))
        return
    with st.spinner(f"Exporting to {common.lit(out)} ..."):
        try:
            summary = export(sess.work.root, out, fmt=fmt, unreviewed=unreviewed, overwrite=overwrite, progress=False)
        except (ExportError, OSError) as exc:
            st.error(f"Export failed: {common.lit(exc)}")
            return
    st.success(f"Exported {summary.n_images:,} photos of {summary.n_identities:,} identities to {common.lit(summary.out)}")
    st.code(summary.report(), language="text")
    for name in ("labels.csv", "manifest.json"):
        path = summary.out / name
        if path.is_file() and path.stat().st_size < 50_000_000:
            st.download_button(f"Download {name}", path.read_bytes(), file_name=name, key=f"export_download_{name}")
