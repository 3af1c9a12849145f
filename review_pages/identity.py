"""Identity view: one identity's photos grouped by graph component, its flags with suggestions, actions, the heatmap.

One keystroke per identity: A accepts every suggestion on the page (one decision per photo, made together), Shift+K
keeps everything, N / P open the next / previous identity of the queue. X remove, K keep (reject their flags),
M move to the suggested identity and F mark fake act on the selected photos. The keys work wherever the focus is,
except while typing in a text field (review_pages.common.shortcuts).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from curation import review as rv
from labels.cli import UserError
from review_pages import common

COLUMNS = 6
SHOWN = 36  # photos drawn per group before "show all"
KEYS = {
    "n": ("next_identity", "next identity"),
    "p": ("prev_identity", "previous identity"),
    "a": ("accept_all", "accept all suggestions"),
    "shift+k": ("keep_all", "keep all"),
    "x": ("sel_remove", "remove selected"),
    "k": ("sel_keep", "keep selected"),
    "m": ("sel_move_suggested", "move selected to the suggestion"),
    "f": ("sel_fake", "mark selected fake"),
    "c": ("sample_confirm", "confirm the sample"),
    "r": ("sample_reject", "reject the sample"),
}


def _step(sess: common.Session, current: str, forward: bool) -> None:
    snap = common.queue(sess)
    find = rv.next_identity if forward else rv.previous_identity
    name, rank = find(snap, current, st.session_state.get("rank", 0))
    if name is None:
        common.flash("info", "That was the last identity of the queue." if forward else "This is the head of the queue.")
        if forward:
            st.session_state.nav = "Queue"
        return
    common.open_identity(name, rank)


def _to_queue() -> None:
    st.session_state.nav = "Queue"


def _move_typed(sess: common.Session, image_ids: list[int]) -> None:
    target = st.session_state.get("move_choice") or ""
    common.act(sess, "move", image_ids=image_ids, target_identity=target)


def _split(sess: common.Session, identity: str, image_ids: list[int], key: str) -> None:
    common.act(sess, "split", identity=identity, image_ids=image_ids, target_identity=st.session_state.get(key, ""))


def _whole_page(sess: common.Session, do, view: rv.IdentityView) -> None:
    """Button callback for accept all / keep all: the outcome (or refusal) flashed on the next run."""
    try:
        out = do(sess.store, view, reviewer=sess.reviewer)
    except UserError as exc:
        common.flash("error", f"Not recorded: {exc}")
        return
    common.flash("success", out.message)


def render(sess: common.Session) -> None:
    name = st.session_state.get("identity")
    if not name:
        st.info("Open an identity from the Queue or the Search page.")
        return
    view = rv.identity_view(sess.store, common.clean(sess.work), name)
    photos = view.photos
    kept = photos[~photos.section.isin(["removed"])]
    top = st.columns([6, 1, 1, 1], vertical_alignment="bottom")
    top[0].header(common.lit(name), anchor=False)
    top[1].button("← Queue", key="to_queue", on_click=_to_queue)
    top[2].button("← Previous", key="prev_identity", on_click=_step, args=(sess, name, False),
                  help="The previous identity of the queue (P)")
    top[3].button("Next →", key="next_identity", on_click=_step, args=(sess, name, True),
                  help="The next identity of the queue (N)")
    n_open = sum(f["status"] == "open" for fl in photos.flag_list for f in fl) + len(view.identity_flags)
    st.caption(
        f"{len(kept)} photos ({int((kept.section == 'fake').sum())} deepfakes), {int((photos.section == 'removed').sum())}"
        f" removed, {n_open} open flag(s)" + "".join(f" · {common.lit(note)}" for note in view.notes)
    )
    common.shortcuts(KEYS)
    sample = _sample(sess, view)
    _identity_flags(sess, view)
    _whole_page_bar(sess, view)
    _action_bar(sess, view)
    group_of = photos.component.where(photos.section == "component", -1).fillna(-1)  # one group per other component
    for (section, component), group in photos.groupby(["section", group_of], sort=False):
        _group(sess, view, section, int(component), group, sample)
    fig = rv.heatmap_figure(view, rv.summarize_report(common.report(sess.work)).thresholds.get("edge"))
    if fig is not None:
        st.subheader("Similarity matrix", anchor=False)
        st.plotly_chart(fig, key="heatmap")
    st.subheader("Decisions on this identity", anchor=False)
    common.history_panel(sess, identity=name)


def _identity_flags(sess: common.Session, view: rv.IdentityView) -> None:
    """Split and merge proposals on the identity as a whole, with both sides shown for a merge."""
    clean = common.clean(sess.work)
    for f in view.identity_flags.itertuples():
        score = "" if pd.isna(f.score) else f" (score {f.score:.2f})"
        box = st.container(border=True)
        if f.kind == "merge":
            other = f.suggested_identity if f.identity == view.identity else f.identity
            box.markdown(f":orange[**merge proposed**] with **{common.lit(other)}**{score}: the same person under two names?")
            cols = box.columns(2)
            for col, who in zip(cols, (view.identity, other)):
                preview = rv.identity_preview(sess.store, clean, who, 6)
                col.caption(f"{common.lit(who)}: {len(sess.store.images(identity=who))} photos")
                if len(preview):
                    col.image([common.thumbnail(sess, p, 96)[0] for _, p in preview.iterrows()], width=72)
            b = box.columns(3)
            b[0].button(f"Merge into {common.lit(other)}", key=f"merge_into_{f.id}", on_click=common.act,
                        args=(sess, "merge"), kwargs={"identity": view.identity, "target_identity": other})
            b[1].button(f"Merge {common.lit(other)} into this", key=f"merge_from_{f.id}", on_click=common.act,
                        args=(sess, "merge"), kwargs={"identity": other, "target_identity": view.identity})
            b[2].button("Different people (keep both)", key=f"keep_flag_{f.id}", on_click=common.act,
                        args=(sess, "keep"), kwargs={"flag_ids": [int(f.id)]})
        else:
            where = "" if pd.isna(f.component) else f": component {int(f.component)} looks like someone else"
            box.markdown(f":orange[**{f.kind} proposed**]{where}{score}. Split it off below, or:")
            box.button("One person (keep as is)", key=f"keep_flag_{f.id}", on_click=common.act, args=(sess, "keep"),
                       kwargs={"flag_ids": [int(f.id)]})


def _sample(sess: common.Session, view: rv.IdentityView) -> int | None:
    """In the queue's information order: the flag this identity was queued for, to answer first; its photo's id."""
    if st.session_state.get("queue_order") != "information":
        return None
    frame = common.queue(sess).frame
    row = frame[frame.identity == view.identity]
    if row.empty:
        return None
    row = row.iloc[0]
    box = st.container(border=True)
    if pd.isna(row.image_id):
        box.markdown(f"**Sample for the estimate:** the {row.reason} proposal below. Answer it first.")
        return None
    image_id = int(row.image_id)
    proposed = next((s for s in rv.suggestions(view)[0] if s.image_id == image_id), None)
    photo = view.photos[view.photos.image_id == image_id]
    cols = box.columns([1, 4, 2, 2], vertical_alignment="center")
    if len(photo):
        cols[0].image(common.thumbnail(sess, photo.iloc[0], 96)[0], width=72)
    cols[1].markdown(f"**Sample for the estimate** ({row.reason}): answer this photo's flag first (marked ★ below). "
                     "Answers to the flags the queue picks keep the estimate of the open flags fair.")
    if proposed is not None:  # confirming changes the label: the suggested move, else remove
        action, to = ("move", proposed.target_identity) if proposed.action == "move" else ("remove", None)
        cols[2].button(f"Confirm: {action}" + (f" to {common.lit(to)}" if to else ""), key="sample_confirm",
                       type="primary", on_click=common.act, args=(sess, action),
                       kwargs={"image_ids": [image_id], "target_identity": to, "flag_ids": list(proposed.flag_ids)},
                       help="The flag is right (C)")
    cols[3].button("Reject: keep", key="sample_reject", on_click=common.act, args=(sess, "keep"),
                   kwargs={"image_ids": [image_id], "flag_ids": view.open_flag_ids([image_id])},
                   help="The flag is wrong: the photo belongs here as it is (R)")
    return image_id


def _whole_page_bar(sess: common.Session, view: rv.IdentityView) -> None:
    """Accept every suggestion on the page, or keep everything: one keystroke per identity."""
    proposed, left = rv.suggestions(view)
    n_flags = len(view.open_flag_ids(view.flagged_ids())) + len(view.identity_flags)
    bar = st.columns([3, 1, 4], vertical_alignment="center")
    bar[0].button(f"Accept all suggestions here ({len(proposed)})", key="accept_all", type="primary",
                  disabled=not proposed, on_click=_whole_page, args=(sess, rv.accept_suggestions, view),
                  help="Each flagged photo gets what its flags suggest (remove, move, or keep when it looks like it "
                       "belongs here), one decision per photo, made together: undo them all at once or one by one (A)")
    bar[1].button("Keep all", key="keep_all", disabled=not n_flags, on_click=_whole_page,
                  args=(sess, rv.keep_all, view), help="Every flag on this page is wrong: close them all (Shift+K)")
    if proposed:
        counts = pd.Series([s.action for s in proposed]).value_counts()
        text = ", ".join(f"{n} {a}" for a, n in counts.items())
        bar[2].caption(f"suggested: {text}" + (f"; {len(left)} photo(s) need you" if left else "")
                       + ("; the merge/split proposals above are yours to answer" if len(view.identity_flags) else ""))


def _action_bar(sess: common.Session, view: rv.IdentityView) -> None:
    """Actions on the selected photos; the shortcuts are live whenever photos are selected."""
    ids = [int(i) for i in view.photos.image_id]
    selected = [i for i in ids if st.session_state.get(f"pick_{i}")]
    suggestions = {
        f["suggested_identity"]
        for i, fl in zip(view.photos.image_id, view.photos.flag_list) if int(i) in selected
        for f in fl if f["status"] == "open" and f["suggested_identity"] and f["suggested_identity"] != view.identity
    }
    bar = st.container(border=True)
    bar.markdown(f"**{len(selected)} selected** · select photos with their checkbox, then:")
    none = not selected
    b = bar.columns(5) + bar.columns([2, 2, 1])
    b[0].button("Remove", key="sel_remove", disabled=none, on_click=common.act, args=(sess, "remove"),
                kwargs={"image_ids": selected}, help="Leave the selected photos out of the cleaned dataset (X)")
    b[1].button("Restore", key="sel_restore", disabled=none, on_click=common.act, args=(sess, "restore"),
                kwargs={"image_ids": selected})
    b[2].button("Keep", key="sel_keep", disabled=none, on_click=common.act, args=(sess, "keep"),
                kwargs={"image_ids": selected, "flag_ids": view.open_flag_ids(selected)},
                help="The flags are wrong: close them, change nothing (K)")
    b[3].button("Mark fake", key="sel_fake", disabled=none, on_click=common.act,
                args=(sess, "mark_fake"), kwargs={"image_ids": selected}, help="(F)")
    b[4].button("Mark real", key="sel_real", disabled=none, on_click=common.act, args=(sess, "mark_real"),
                kwargs={"image_ids": selected})
    target = next(iter(suggestions)) if len(suggestions) == 1 else None
    b[5].button(f"Move to {common.lit(target)}" if target else "Move to suggested", key="sel_move_suggested",
                disabled=target is None, on_click=common.act, args=(sess, "move"),
                kwargs={"image_ids": selected, "target_identity": target},
                help="Move to the identity the flags suggest (M); needs one common suggestion")
    with b[6].popover("Move to…", disabled=none):
        typed = st.text_input("Identity (existing or new)", key="move_text")
        matches = rv.find_identities(sess.store, typed, limit=10) if typed.strip() else []
        options = matches + ([typed.strip()] if typed.strip() and typed.strip() not in matches else [])
        if st.session_state.get("move_choice") not in options:  # the typed text changed: follow it
            st.session_state.move_choice = options[0] if options else None
        st.selectbox("Target", options, key="move_choice", format_func=lambda o: o if o in matches else f"{o} (new)")
        st.button("Move", key="move_typed", disabled=not options, on_click=_move_typed, args=(sess, selected))


def _group(sess: common.Session, view: rv.IdentityView, section: str, component: int, group: pd.DataFrame,
           sample: int | None) -> None:
    title = rv.SECTIONS[section]
    if section == "component":
        title = f"Component {component}"
    st.subheader(f"{title} ({len(group)})", anchor=False)
    if section in ("component", "isolated"):
        with st.expander("Split these photos off into a new identity"):
            key = f"split_name_{component}"
            st.session_state.setdefault(key, rv.split_name(sess.store, view.identity, component))
            st.text_input("New identity name", key=key)
            st.button("Split off", key=f"split_{component}", on_click=_split,
                      args=(sess, view.identity, group.image_id.astype(int).tolist(), key))
    show_all = len(group) <= SHOWN or st.toggle(f"Show all {len(group)}", key=f"all_{section}_{component}")
    rows = group if show_all else group.iloc[:SHOWN]
    for start in range(0, len(rows), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, (_, photo) in zip(cols, rows.iloc[start : start + COLUMNS].iterrows()):
            with col:
                _photo(sess, view, photo, sample)


def _photo(sess: common.Session, view: rv.IdentityView, photo: pd.Series, sample: int | None) -> None:
    pid = int(photo.image_id)
    data, reason = common.thumbnail(sess, photo)
    if photo.section == "fake" and not pd.isna(photo.best_to_main):  # a deepfake is judged by its best match
        sim = f" · best {photo.best_to_main:.2f} to main"
    else:
        sim = "" if pd.isna(photo.sim_to_main) else f" · {photo.sim_to_main:.2f} to main"
    star = "★ sample · " if pid == sample else ""
    st.image(data, caption=f"{star}{common.lit(Path(photo.path).name)}{sim}", width="stretch")
    if reason:
        st.caption(f":warning: cannot show: {common.lit(reason)}")
    flags = [f for f in photo.flag_list if f["status"] == "open"]
    for f in flags:
        text = f":red[**{f['kind']}**]"
        sim_s = "" if f["sim_to_suggested"] is None else f" ({f['sim_to_suggested']:.2f})"
        if f["suggested_identity"] == view.identity:
            text += f": looks like it belongs here{sim_s}: keep?"
        elif f["suggested_identity"]:
            text += f" → {common.lit(f['suggested_identity'])}{sim_s}"
        st.markdown(text)
        if f.get("why"):
            st.caption(common.lit(f["why"]))
        preview = view.suggestions.get(f["suggested_identity"])
        if preview is not None and len(preview):
            st.image([common.thumbnail(sess, p, 64)[0] for _, p in preview.iterrows()], width=40)
    answered = [f["kind"] for f in photo.flag_list if f["status"] != "open"]
    if answered:
        st.caption("answered: " + ", ".join(answered))
    st.checkbox("select", key=f"pick_{pid}")
    if photo.removed:
        st.button("Restore", key=f"restore_{pid}", on_click=common.act, args=(sess, "restore"),
                  kwargs={"image_ids": [pid]})
    elif flags:
        st.button("Remove", key=f"rm_{pid}", on_click=common.act, args=(sess, "remove"), kwargs={"image_ids": [pid]},
                  width="stretch", help="Leave this photo out of the cleaned dataset")
        st.button("Keep", key=f"keep_{pid}", on_click=common.act, args=(sess, "keep"), width="stretch",
                  kwargs={"image_ids": [pid], "flag_ids": [f["id"] for f in flags]}, help="The flag is wrong")
        target = next((f["suggested_identity"] for f in flags
                       if f["suggested_identity"] and f["suggested_identity"] != view.identity), None)
        if target:
            st.button(f"Move to {common.lit(target)}", key=f"mv_{pid}", on_click=common.act, args=(sess, "move"),
                      kwargs={"image_ids": [pid], "target_identity": target}, width="stretch")
