"""What every page of the review app shares: the session (work folder, store, reviewer), cached loaders, the URL state,
thumbnails, messages and the history panel. Logic lives in curation.review; this module only wires it to Streamlit.

Why the URL holds the state (view, identity, queue rank and filter, reviewer): a browser refresh or a server restart
starts a new Streamlit session, and the reviewer must land where they were. The store's meta keeps the same position
per reviewer, for a reviewer who opens the app fresh.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import string
import textwrap
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from streamlit import config as st_config

from labels.cli import UserError
from curation import review as rv
from labels.store import LabelStore
from labels.vocab import FLAG_KINDS

VIEWS = ("Overview", "Queue", "Identity", "Search", "Export", "Training", "Evaluation")
LANDING = "Queue"  # where a reviewer without a saved position starts: the work
URL_KEYS = ("view", "identity", "rank", "kinds", "order", "qpage", "reviewer")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Arguments after `--` on the streamlit command line. Raises SystemExit(message) with the usage on bad input."""
    parser = argparse.ArgumentParser(
        prog="streamlit run app.py --",
        description="Review the flags of the last clean and record decisions in the label store.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            examples:
              streamlit run app.py -- --workdir WORK
              streamlit run app.py --server.port 8600 -- --workdir /data/work
              FACECUR_WORKDIR=WORK streamlit run app.py
            """
        ),
        exit_on_error=False,
        add_help=False,
    )
    parser.add_argument("--workdir", default=os.environ.get("FACECUR_WORKDIR"), help="the work folder of a clean")
    parser.add_argument("-h", "--help", action="store_true")
    try:
        args, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as exc:
        raise SystemExit(f"{exc}\n\n{parser.format_help()}") from exc
    if args.help or unknown or not args.workdir:
        problem = f"unknown argument(s): {' '.join(unknown)}\n\n" if unknown else ""
        problem += "" if args.workdir or args.help else "no work folder given\n\n"
        raise SystemExit(problem + parser.format_help())
    return args


def check_listening() -> None:
    """Refuse to serve when Streamlit listens on every interface only because no config said otherwise."""
    address = st_config.get_option("server.address")
    if address in (None, "", "0.0.0.0", "::") and st_config.get_where_defined("server.address") == "<default>":
        st.error(
            "This server listens on every network interface because it was started without the project's "
            "`.streamlit/config.toml`. Start it from the repository's root, or pass `--server.address 127.0.0.1` "
            "(or another address, deliberately)."
        )
        st.stop()


_MD_PUNCT = re.compile("([" + re.escape(string.punctuation) + "])")
_AUTOLINK = re.compile(r"(?i)\b(?:www(?=\.)|https?(?=:)|ftp(?=:))|(?<=[\w.+-])(?=@)")


def lit(text: object) -> str:
    """`text` (a name, a path, a reviewer, a note, an error message) for any Streamlit element that renders Markdown:
    st.markdown, st.write, captions, headers, messages, image captions and every widget label. Shown as it is.

    Every ASCII punctuation mark is backslash-escaped (CommonMark's own rule: it also disarms Streamlit's
    `:red[...]`, `:material/...:` and `$math$`), a newline becomes a line break, and an invisible word joiner (U+2060)
    goes where GitHub-style autolinking would turn `www.`, `http:` or an e-mail address into a link: that step looks
    at the text after escapes are resolved, so only a character in between stops it. Checked in a real browser by
    tests/test_app_browser.py.
    """
    text = _AUTOLINK.sub(lambda m: m.group(0) + "\u2060", str(text))
    return _MD_PUNCT.sub(r"\\\1", text).replace("\n", "  \n")


def code(text: object) -> str:
    """`text` as a Markdown code span (literal by nature; the fence outgrows any run of backticks inside)."""
    text = str(text)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


@dataclass
class Session:
    """One browser session: the work folder, its own store connection and the reviewer's name."""

    work: rv.WorkFolder
    store: LabelStore
    reviewer: str


@st.cache_resource(show_spinner=False, max_entries=4)
def _clean(root: str, version: tuple) -> rv.CleanResult | None:
    """nodes.parquet + memory-mapped embeddings, loaded once per clean and shared by every session."""
    return rv.load_clean(rv.WorkFolder(Path(root)))


def clean(work: rv.WorkFolder) -> rv.CleanResult | None:
    return _clean(str(work.root), rv.clean_version(work))


@st.cache_resource(show_spinner=False, max_entries=4)
def _report(root: str, version: tuple) -> dict:
    return rv.read_report(rv.WorkFolder(Path(root)))


def report(work: rv.WorkFolder) -> dict:
    """report.json, parsed once per clean (a report with per-identity noise rates can be megabytes)."""
    return _report(str(work.root), rv.clean_version(work))


@st.cache_resource(show_spinner=False)
def _queues(root: str) -> dict:
    """The latest queue snapshot per filter, shared by sessions; each rerun brings it up to date incrementally."""
    return {}


def queue(sess: Session) -> rv.QueueSnapshot:
    """The queue for this session's filter and order (session state queue_kinds, queue_order)."""
    kinds = tuple(st.session_state.get("queue_kinds", []))
    order = st.session_state.get("queue_order", "worth")
    holder = _queues(str(sess.work.root))
    summary = rv.summarize_report(report(sess.work))
    snap = rv.queue_snapshot(sess.store, summary, kinds=kinds or None, order=order, previous=holder.get((kinds, order)))
    holder[(kinds, order)] = snap
    return snap


@st.cache_data(show_spinner=False, max_entries=20_000)
def _thumbnail(path: str, mtime_ns: int, roots: tuple[str, ...], size: int) -> tuple[bytes, str | None]:
    """Cached by path and modification time, so an edited file is shown fresh and a re-shown one costs nothing."""
    thumb = rv.load_thumbnail(path, [Path(r) for r in roots], size=size)
    return thumb.data, thumb.reason


@st.cache_data(show_spinner=False, max_entries=256)
def _placeholder(reason: str, size: int) -> bytes:
    return rv.placeholder(reason, size).data


def thumbnail(sess: Session, photo, size: int = 160) -> tuple[bytes, str | None]:
    """Thumbnail bytes of a photo row (from the store, by id) and why it is a placeholder, if it is one."""
    path, reason = rv.photo_source(sess.store, sess.work, photo, rv.crop_align_id(report(sess.work)))
    if path is None:
        return _placeholder(reason, size), reason
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = -1  # missing: load_thumbnail names the reason
    roots = tuple(str(r) for r in rv.allowed_roots(sess.store, sess.work))
    return _thumbnail(str(path), mtime, roots, size)


# ---- URL and position -----------------------------------------------------------------------------------------------
def restore_state() -> None:
    """Seed session state from the URL once per session (a reload lands where the reviewer was)."""
    if st.session_state.get("_restored"):
        return
    qp = st.query_params
    if qp.get("reviewer"):
        st.session_state.reviewer = qp["reviewer"]
    _apply_position({**qp.to_dict(), "kinds": (qp.get("kinds") or "").split(",")})
    st.session_state._restored = True


def _apply_position(pos: dict) -> None:
    """Put a saved position (view, identity, rank, qpage, kinds: from the URL or the store) into session state,
    dropping what is not valid."""
    if pos.get("view") in VIEWS:
        st.session_state.nav = pos["view"]
    if pos.get("identity"):
        st.session_state.identity = pos["identity"]
    st.session_state.rank = _int(pos.get("rank"), 0)
    st.session_state.queue_offset = _int(pos.get("qpage"), 0)
    st.session_state.queue_kinds = [k for k in pos.get("kinds") or [] if k in FLAG_KINDS]
    st.session_state.queue_order = pos.get("order") if pos.get("order") in rv.ORDERS else "worth"


def restore_position(store: LabelStore, reviewer: str) -> None:
    """A reviewer who opens the app without a position in the URL resumes at the one saved in the store."""
    if st.query_params.get("view"):
        return
    _apply_position(rv.load_position(store, reviewer))


def _int(value, default: int) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return default


def sync_position(sess: Session) -> None:
    """Write the current position into the URL and, when it changed, into the store for this reviewer."""
    pos = {
        "view": st.session_state.get("nav", LANDING),
        "identity": st.session_state.get("identity") or "",
        "rank": int(st.session_state.get("rank", 0)),
        "qpage": int(st.session_state.get("queue_offset", 0)),
        "kinds": list(st.session_state.get("queue_kinds", [])),
        "order": st.session_state.get("queue_order", "worth"),
    }
    url = {k: str(v) for k, v in pos.items() if k != "kinds" and v not in ("", None) and (k, v) != ("order", "worth")}
    if pos["kinds"]:
        url["kinds"] = ",".join(pos["kinds"])
    url["reviewer"] = sess.reviewer
    if dict(st.query_params) != url:
        st.query_params.from_dict(url)
    if st.session_state.get("_saved_position") != pos:
        rv.save_position(sess.store, sess.reviewer, pos)
        st.session_state._saved_position = pos


def open_identity(name: str, rank: int = 0) -> None:
    """Callback for 'open' buttons: switch to the identity page on `name`."""
    st.session_state.identity = name
    st.session_state.rank = rank
    st.session_state.nav = "Identity"


# ---- messages and actions -------------------------------------------------------------------------------------------
def flash(level: str, text: str) -> None:
    """Queue a message for the next run (callbacks run before the page is drawn)."""
    st.session_state.setdefault("_flash", []).append((level, text))


def show_flash() -> None:
    for level, text in st.session_state.pop("_flash", []):
        getattr(st, level)(lit(text))


def act(sess: Session, action: str, **kwargs) -> None:
    """Button callback: one decision through curation.review, its outcome (or refusal) flashed on the next run."""
    try:
        out = rv.apply_action(sess.store, action, reviewer=sess.reviewer, **kwargs)
    except UserError as exc:
        flash("error", f"Not recorded: {exc}")
        return
    flash("success", out.message)
    for key in [k for k in st.session_state if str(k).startswith("pick_")]:
        st.session_state[key] = False  # the selection was acted on


def undo(sess: Session, decision_ids: list[int]) -> None:
    """Button callback: undo one decision, or a batch of them at once."""
    try:
        if len(decision_ids) == 1:
            out = rv.undo_decision(sess.store, decision_ids[0], reviewer=sess.reviewer)
        else:
            out = rv.undo_decisions(sess.store, decision_ids, reviewer=sess.reviewer)
    except UserError as exc:
        flash("error", f"Not undone: {exc}")
        return
    flash("success", out.message)


def history_panel(sess: Session, *, identity: str | None = None, limit: int = 10, where=None) -> None:
    """Recent decisions (all, or on one identity), newest first, each with an undo button where the store would undo
    it: decisions made together (accept all) are one line with one button in the sidebar, one line each on a page."""
    where = where or st
    lines = rv.history_lines(sess.store, limit=limit, identity=identity, grouped=identity is None)
    if not lines:
        where.caption("No decisions yet.")
    prefix = "hundo" if identity else "undo"
    for line in lines:
        where.caption(lit(line["text"]))
        if line["undoable"]:
            n = len(line["ids"])
            where.button("Undo" if n == 1 else f"Undo all {n}", key=f"{prefix}_{line['id']}", on_click=undo,
                         args=(sess, line["ids"]), type="tertiary", icon=":material/undo:",
                         help=f"Reverse decision #{line['id']}" if n == 1 else f"Reverse decisions #{min(line['ids'])}-"
                         f"#{max(line['ids'])}, made together")
        elif line["blocked_by"]:
            where.caption(f"(to undo it, undo #{line['blocked_by']} first: it decided on the same photos later)")


# ---- keyboard -----------------------------------------------------------------------------------------------------------
_SHORTCUT_SCRIPT = """<script>
(() => {
  window.__facecurShortcuts = %s;
  if (window.__facecurKeys) return;  // one listener per browser tab; each page only replaces the map
  window.__facecurKeys = true;
  const typing = el => !!el && (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT" ||
    (el.tagName === "INPUT" && !["checkbox", "radio", "button", "submit", "reset", "range", "color"].includes(el.type)));
  window.addEventListener("keydown", ev => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing) return;
    if (typing(ev.target)) { if (ev.key === "Escape") ev.target.blur(); return; }
    const key = window.__facecurShortcuts[(ev.shiftKey ? "shift+" : "") + ev.key.toLowerCase()];
    const button = key && document.querySelector(".st-key-" + key + " button");
    if (!button || button.disabled) return;
    ev.preventDefault();
    ev.stopImmediatePropagation();  // Streamlit's own shortcut handling never sees it: one click per key press
    button.click();
  }, true);
})();
</script>"""


def shortcuts(keys: dict[str, tuple[str, str]], where=None) -> None:
    """Keyboard shortcuts for this page: key ('n', 'shift+k', 'arrowright') -> (button key, what it does).

    Why not Streamlit's `shortcut=`: it ignores a key while any input has the focus, a photo's checkbox included, so
    after ticking a photo N did nothing. This listener (on the window, capture phase) works wherever the focus is,
    except while typing in a text field, where keys type; Esc leaves the field. The list is shown on the page.
    """
    where = where or st
    mapping = {k: button for k, (button, _) in keys.items()}
    where.html(_SHORTCUT_SCRIPT % json.dumps(mapping), unsafe_allow_javascript=True)
    where.caption("Keys: " + " · ".join(f"**{_key_name(k)}** {what}" for k, (_, what) in keys.items())
                  + " · **Esc** leaves a text field")


def _key_name(key: str) -> str:
    names = {"arrowleft": "←", "arrowright": "→", "shift": "Shift"}
    return "+".join(names.get(part, part.upper()) for part in key.split("+"))


def error_page(message: str) -> None:
    st.error(lit(message))
    st.stop()
