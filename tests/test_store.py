"""The label store: decisions, undo, history, the append-only log, rebuild, flags, concurrent writers.

The store never reads image files, so these tests register synthetic `FoundImage`s; labels are checked against a replay
written here from the actions alone (not from what the store recorded).
"""
from __future__ import annotations

import multiprocessing
import random
import sqlite3
import time

import numpy as np
import pandas as pd
import pytest

from labels.store import DecisionRequest, FoundImage, LabelStore, NewFlag, StoreError, UndoConflict

IDENTITIES = ("A", "B", "C")


def _found(n_per: int = 4) -> list[FoundImage]:
    return [
        FoundImage(f"{ident}/{k}.jpg", 1000 + k, 1, ident, k == n_per - 1, sha256=f"{ident}{k}", width=9, height=9)
        for ident in IDENTITIES
        for k in range(n_per)
    ]


@pytest.fixture
def store(tmp_path):
    s = LabelStore.open(tmp_path)
    s.set_meta(dataset_root=str(tmp_path / "data"))
    s.add_images(_found())
    yield s
    s.close()


def _labels(store: LabelStore) -> dict[str, tuple[str, int, int]]:
    df = store.images(present_only=False)
    return {p: (i, int(f), int(r)) for p, i, f, r in zip(df.path, df.identity, df.is_fake, df.removed)}


def _ids(store: LabelStore, *paths: str) -> list[int]:
    ids = store.image_ids(paths)
    return [ids[p] for p in paths]


ACTION_CASES = {
    # action: (decide kwargs, paths touched, expected labels of those paths after)
    "remove": (dict(paths=["A/0.jpg"]), {"A/0.jpg": ("A", 0, 1)}),
    "move": (dict(paths=["A/0.jpg", "A/1.jpg"], target_identity="B"), {"A/0.jpg": ("B", 0, 0), "A/1.jpg": ("B", 0, 0)}),
    "mark_fake": (dict(paths=["B/0.jpg"]), {"B/0.jpg": ("B", 1, 0)}),
    "mark_real": (dict(paths=["B/3.jpg"]), {"B/3.jpg": ("B", 0, 0)}),
    "merge": (dict(identity="C", target_identity="A"), {f"C/{k}.jpg": ("A", int(k == 3), 0) for k in range(4)}),
    "keep": (dict(paths=["A/2.jpg"]), {"A/2.jpg": ("A", 0, 0)}),
}


@pytest.mark.parametrize("action", sorted(ACTION_CASES))
def test_every_action_applies_shows_in_history_and_undoes(store, action):
    kwargs, expected = ACTION_CASES[action]
    kwargs = dict(kwargs)
    paths = kwargs.pop("paths", [])
    store.replace_flags(
        "clean",
        [NewFlag("outlier", "A", "A/2.jpg"), NewFlag("merge", "C", None, suggested_identity="A", score=0.9)],
    )
    before = _labels(store)
    did = store.decide(action, reviewer="ana", image_ids=_ids(store, *paths), note="why", **kwargs)

    after = _labels(store)
    assert {p: after[p] for p in expected} == expected
    for p in set(before) - set(expected):  # nothing else changed
        assert after[p] == before[p], p
    (entry,) = store.history(limit=1)
    assert (entry.id, entry.action, entry.reviewer, entry.note, entry.undone_by) == (did, action, "ana", "why", None)
    assert len(entry.image_ids) == len(expected)
    answered = {"keep": "outlier", "merge": "merge"}.get(action)
    if answered:  # the flag this decision answers is closed, and reopened by the undo
        flag = store.flags(kind=answered)
        assert flag.status.tolist() == ["resolved"] and entry.flag_ids == tuple(flag.id)

    uid = store.undo(did, reviewer="bo")
    assert _labels(store) == before
    assert store.history(limit=2)[1].undone_by == uid
    line = store.history(limit=1)[0].describe()
    assert line.startswith(f"#{uid}") and f"undid decision #{did}" in line
    assert set(store.flags().status) == {"open"}


def test_restore_is_a_decision_of_its_own(store):
    (i,) = _ids(store, "A/1.jpg")
    store.decide("remove", reviewer="ana", image_ids=[i])
    store.decide("restore", reviewer="bo", image_ids=[i])
    assert _labels(store)["A/1.jpg"] == ("A", 0, 0)
    assert [d.action for d in store.history(image_id=i)] == ["restore", "remove"]


def test_undo_refuses_to_overwrite_a_later_decision(store):
    (i,) = _ids(store, "A/1.jpg")
    first = store.decide("remove", reviewer="ana", image_ids=[i])
    second = store.decide("move", reviewer="bo", image_ids=[i], target_identity="C")
    with pytest.raises(UndoConflict, match=f"A/1.jpg was changed again by decision #{second}"):
        store.undo(first, reviewer="ana")
    assert _labels(store)["A/1.jpg"] == ("C", 0, 1)  # the refused undo changed nothing
    store.undo(second, reviewer="ana")
    undo_first = store.undo(first, reviewer="ana")
    assert _labels(store)["A/1.jpg"] == ("A", 0, 0)
    with pytest.raises(StoreError, match="already undone"):
        store.undo(first, reviewer="ana")
    with pytest.raises(StoreError, match="itself an undo"):
        store.undo(undo_first, reviewer="ana")


def test_undo_refuses_when_a_later_live_decision_touched_the_photo_even_if_it_looks_unchanged(store):
    """Issue 14: ana removes X (#1), bob restores X (#2), bob removes X (#3); X is as #1 left it, yet undoing #1 would
    override bob's #3. The log says a later live decision touched X: refuse and name it."""
    (x,) = _ids(store, "A/1.jpg")
    first = store.decide("remove", reviewer="ana", image_ids=[x])
    store.decide("restore", reviewer="bob", image_ids=[x])
    third = store.decide("remove", reviewer="bob", image_ids=[x])
    with pytest.raises(UndoConflict, match=f"A/1.jpg was changed again by decision #{third} \\(bob"):
        store.undo(first, reviewer="ana")
    assert _labels(store)["A/1.jpg"] == ("A", 0, 1) and len(store.history()) == 3  # nothing recorded
    assert store.history()[-1].blocked_by == third
    store.undo(third, reviewer="bob")  # #4; #2 (restore) is still live and blocks #1
    with pytest.raises(UndoConflict, match="by decision #2 "):
        store.undo(first, reviewer="ana")
    # a keep on the photo is a later decision about it too, though it changes no label
    (y,) = _ids(store, "B/1.jpg")
    removed = store.decide("remove", reviewer="ana", image_ids=[y])
    kept = store.decide("keep", reviewer="bob", image_ids=[y])
    with pytest.raises(UndoConflict, match=f"B/1.jpg was decided on again by decision #{kept} \\(bob"):
        store.undo(removed, reviewer="ana")
    store.undo(kept, reviewer="bob")
    store.undo(removed, reviewer="ana")  # the later one undone: no longer live, so the undo goes through
    assert _labels(store)["B/1.jpg"] == ("B", 0, 0)


def test_a_batch_is_all_or_none_and_each_of_its_decisions_undoes_alone(store):
    a0, a1, b0 = _ids(store, "A/0.jpg", "A/1.jpg", "B/0.jpg")
    store.replace_flags("clean", [NewFlag("outlier", "A", "A/0.jpg"), NewFlag("outlier", "A", "A/1.jpg")])
    before = _labels(store)
    store.decide("remove", reviewer="bo", image_ids=[a1])  # answers A/1's flag
    with pytest.raises(StoreError, match="nothing to change"):
        store.decide_many([DecisionRequest("remove", (a0,)), DecisionRequest("remove", (a1,))], reviewer="ana",
                          strict=True)
    assert len(store.history()) == 1 and _labels(store)["A/0.jpg"] == before["A/0.jpg"]  # none of them recorded
    ids = store.decide_many([DecisionRequest("remove", (a0,)), DecisionRequest("move", (b0,), target_identity="C")],
                            reviewer="ana", strict=True)
    assert store.batch(ids[0]) == ids and {d.batch for d in store.history(limit=2)} == {ids[0]}
    assert _labels(store)["A/0.jpg"] == ("A", 0, 1) and _labels(store)["B/0.jpg"] == ("C", 0, 0)
    store.undo(ids[1], reviewer="ana")  # one of a batch, alone
    assert _labels(store)["B/0.jpg"] == ("B", 0, 0)
    with pytest.raises(StoreError, match="already undone"):
        store.undo_many(ids, reviewer="ana")  # all or none: A/0 stays removed
    assert _labels(store)["A/0.jpg"] == ("A", 0, 1)
    later = store.decide("mark_fake", reviewer="bo", image_ids=[a0])
    with pytest.raises(UndoConflict, match=f"#{later}"):
        store.undo_many([ids[0]], reviewer="ana")
    undos = store.undo_many([later, ids[0]], reviewer="ana")  # the later one first, inside one set
    assert len(undos) == 2 and store.batch(undos[0]) == undos and _labels(store)["A/0.jpg"] == before["A/0.jpg"]
    db = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM decision_batches")
    db.close()


def test_bad_decisions_are_refused_and_record_nothing(store):
    (i,) = _ids(store, "A/1.jpg")
    for kwargs, message in [
        (dict(action="move", image_ids=[i], target_identity="../x"), "not a usable identity"),
        (dict(action="move", image_ids=[i], target_identity="a/b"), "not a usable identity"),
        (dict(action="merge", identity="A", target_identity="A"), "into itself"),
        (dict(action="merge", identity="Nobody", target_identity="A"), "no photos"),
        (dict(action="remove", image_ids=[]), "at least one photo"),
        (dict(action="remove", image_ids=[99999]), "no image #99999"),
    ]:
        with pytest.raises(StoreError, match=message):
            store.decide(reviewer="ana", **kwargs)
    with pytest.raises(StoreError, match="reviewer"):
        store.decide("remove", reviewer=" ", image_ids=[i])
    with pytest.raises(ValueError, match="unknown action"):
        store.decide("delete", reviewer="ana", image_ids=[i])
    assert store.history() == []


def test_decision_log_is_append_only(store):
    (i,) = _ids(store, "A/1.jpg")
    store.replace_flags("clean", [NewFlag("outlier", "A", "A/1.jpg")])
    store.decide("remove", reviewer="ana", image_ids=[i])
    db = sqlite3.connect(store.path)
    for sql in [
        "UPDATE decisions SET reviewer='mallory'",
        "DELETE FROM decisions",
        "UPDATE decision_images SET after_removed=0",
        "DELETE FROM decision_images",
        "UPDATE decision_flags SET flag_id=flag_id+1",
        "DELETE FROM decision_flags",
    ]:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(sql)
    db.close()
    assert [d.reviewer for d in store.history()] == ["ana"]


def test_replace_flags_keeps_answered_flags_and_does_not_double_reopened_ones(store):
    a1, a2 = _ids(store, "A/1.jpg", "A/2.jpg")
    flags = [NewFlag("outlier", "A", "A/1.jpg"), NewFlag("outlier", "A", "A/2.jpg")]
    store.replace_flags("clean", flags)
    keep = store.decide("keep", reviewer="ana", image_ids=[a1])
    remove = store.decide("remove", reviewer="ana", image_ids=[a2])
    store.undo(remove, reviewer="ana")  # reopens A/2's flag
    assert store.replace_flags("clean", flags) == 0  # neither the kept nor the reopened flag is raised again
    table = store.flags()
    assert sorted(zip(table.image, table.status)) == [("A/1.jpg", "resolved"), ("A/2.jpg", "open")]
    store.replace_flags("clean", [NewFlag("outlier", "B", "B/0.jpg")])
    assert sorted(store.flags(status="open").image) == ["A/2.jpg", "B/0.jpg"]  # A/2's carries history: it stays
    assert store.history(limit=10)[-1].id == keep
    with pytest.raises(StoreError, match="never ingested"):
        store.replace_flags("clean", [NewFlag("outlier", "A", "A/nope.jpg")])


def test_flag_columns_write_what_flag_objects_write(tmp_path, store):
    """replace_flag_columns (arrays, NA and NaN for empty fields, as a clean hands them over) stores the same rows as
    replace_flags with the equal NewFlags, into a fresh store and into one where a flag was answered (not raised again);
    an unknown path is refused; flags(columns=...) reads only those columns."""
    flags = [
        NewFlag("outlier", "A", "A/1.jpg", "B", 0, 0.75, {"z": -3.5, "nearest": {"b": None, "a": [1, 2]}}),
        NewFlag("minority", "A", "A/2.jpg", None, 2, 0.6, {}),
        NewFlag("merge", "C", None, "A", None, 0.5, {"n_main": [4, 4]}),
        NewFlag("duplicate", "B", "B/0.jpg", "B", 0, None, {"duplicate_of": "B/1.jpg"}),
    ]
    columns = {
        "kind": np.array([f.kind for f in flags], dtype=object),
        "identity": [f.identity for f in flags],
        "image_path": np.array([f.image_path for f in flags], dtype=object),
        "suggested_identity": pd.Series(["B", np.nan, "A", "B"]).to_numpy(dtype=object),
        "component": pd.array([0, 2, pd.NA, 0], dtype="Int64"),
        "score": np.array([0.75, 0.6, 0.5, np.nan]),
        "details": [f.details for f in flags],
    }
    (a1,) = _ids(store, "A/1.jpg")
    with LabelStore.open(tmp_path / "columns") as fresh:
        fresh.add_images(_found())
        assert store.replace_flags("clean", flags) == fresh.replace_flag_columns("clean", columns) == 4
        assert store.flags().drop(columns="created").equals(fresh.flags().drop(columns="created"))
        store.decide("keep", reviewer="ana", image_ids=[a1])
        fresh.decide("keep", reviewer="ana", image_ids=[a1])
        assert store.replace_flags("clean", flags) == fresh.replace_flag_columns("clean", columns) == 3
        assert store.flags().drop(columns="created").equals(fresh.flags().drop(columns="created"))
        assert fresh.flags(columns=["image", "score"]).columns.tolist() == ["image", "score"]
        with pytest.raises(StoreError, match="never ingested"):
            fresh.replace_flag_columns("clean", {**columns, "image_path": ["A/1.jpg", "A/nope.jpg", None, "B/0.jpg"]})
        with pytest.raises(ValueError, match="lack details"):
            fresh.replace_flag_columns("clean", {k: v for k, v in columns.items() if k != "details"})


def test_reingest_through_add_images_keeps_decided_labels(store):
    (i,) = _ids(store, "A/1.jpg")
    store.decide("move", reviewer="ana", image_ids=[i], target_identity="B")
    changed = [FoundImage(f.path, f.size, 2, "Z", f.is_fake, f.sha256)
               for f in _found() if f.path in ("A/1.jpg", "A/2.jpg")]
    store.add_images(changed)
    labels = _labels(store)
    assert labels["A/1.jpg"] == ("B", 0, 0)  # decided: the reviewer's label stays
    assert labels["A/2.jpg"] == ("Z", 0, 0)  # untouched: follows what ingest found


def test_index_images_are_stored_as_add_images_stores_them(tmp_path, store):
    """The columnar add of an index (precomputed embeddings) writes the same rows as add_images with the same
    FoundImages would, into an empty store and into one with a decision (whose label stays)."""
    paths = ["A/0.jpg", "Q/0.jpg", "A/9.jpg", "Q/0.jpg"]  # a repeated path ends with its last values
    identities, fakes = ["Y", "Q", "A", "R"], [False, True, False, False]
    (i,) = _ids(store, "A/0.jpg")
    store.decide("move", reviewer="ana", image_ids=[i], target_identity="B")
    with LabelStore.open(tmp_path / "rows") as fresh, LabelStore.open(tmp_path / "objects") as objects:
        for s in (store, fresh):
            assert s.add_index_images(paths, identities, fakes) == ((2, 2) if s is store else (3, 1))
        objects.add_images(FoundImage(p, 0, 0, n, f) for p, n, f in zip(paths, identities, fakes))
        assert fresh.images(present_only=False).equals(objects.images(present_only=False))
        assert fresh.images(columns=["path", "identity"]).columns.tolist() == ["id", "path", "identity"]
    labels = _labels(store)
    assert labels["A/0.jpg"] == ("B", 0, 0)  # decided: the reviewer's label stays
    assert labels["Q/0.jpg"] == ("R", 0, 0) and labels["A/9.jpg"] == ("A", 0, 0)
    row = store.images(present_only=False).set_index("path").loc["A/0.jpg"]
    assert row["size"] == 0 and pd.isna(row.sha256) and row.identity_found == "Y"  # refreshed as the index lists it


# ---- rebuild against an independent replay ---------------------------------------------------------------------------
class Replay:
    """The meaning of decisions, written from their definitions in labels/vocab.py and labels/store.py's docstrings."""

    def __init__(self, labels: dict[int, tuple[str, int, int]], flags: dict[int, tuple[int | None, str, str | None]]):
        self.labels = dict(labels)
        self.flags = flags  # id -> (image_id, identity, suggested_identity)
        self.answers: dict[int, set[int]] = {f: set() for f in flags}
        self.done: dict[int, tuple[dict, list[int]]] = {}  # decision -> ({image: (before, after)}, flags answered)
        self.undone: set[int] = set()

    def open_flags(self) -> set[int]:
        return {f for f, live in self.answers.items() if not live}

    def decide(self, did, action, image_ids, identity=None, target=None):
        if action == "merge":
            image_ids = [i for i, lab in self.labels.items() if lab[0] == identity]
            flags = [
                f for f in self.open_flags()
                if self.flags[f][0] is None and {self.flags[f][1], self.flags[f][2]} == {identity, target}
            ]
        else:
            flags = [f for f in self.open_flags() if self.flags[f][0] in image_ids]
        changes = {}
        for i in image_ids:
            ident, fake, removed = before = self.labels[i]
            after = {
                "remove": (ident, fake, 1), "restore": (ident, fake, 0), "mark_fake": (ident, 1, removed),
                "mark_real": (ident, 0, removed), "move": (target, fake, removed), "merge": (target, fake, removed),
                "keep": before,
            }[action]
            changes[i] = (before, after)
            self.labels[i] = after
        for f in flags:
            self.answers[f].add(did)
        self.done[did] = (changes, flags)

    def conflicts(self, did) -> bool:
        """A later live decision (not undone; undos are not in `done`) touched one of its photos."""
        mine = set(self.done[did][0])
        return any(d > did and d not in self.undone and mine & set(ch) for d, (ch, _) in self.done.items())

    def undo(self, did):
        changes, flags = self.done[did]
        for i, (before, _) in changes.items():
            self.labels[i] = before
        for f in flags:
            self.answers[f].discard(did)
        self.undone.add(did)


def _state(store: LabelStore) -> tuple[dict, dict]:
    images = store.images(present_only=False)
    rows = zip(images.id, images.identity, images.is_fake, images.removed)
    labels = {int(i): (n, int(f), int(r)) for i, n, f, r in rows}
    flags = store.flags()
    return labels, dict(zip(flags.id.astype(int), flags.status))


def test_rebuild_reproduces_labels_after_random_decisions(store):
    rng = random.Random(7)
    path_ids = store.image_ids([f.path for f in _found()])
    store.replace_flags(
        "clean",
        [NewFlag("outlier", p.split("/")[0], p) for p in sorted(path_ids)[::3]]
        + [NewFlag("merge", "A", None, suggested_identity="B"), NewFlag("merge", "C", None, suggested_identity="D")],
    )
    table = store.flags()
    replay = Replay(
        _state(store)[0],
        {
            int(f.id): (path_ids[f.image] if isinstance(f.image, str) else None, f.identity, f.suggested_identity)
            for f in table.itertuples()
        },
    )
    ids = sorted(path_ids.values())
    n_conflicts = 0
    for _ in range(150):
        action = rng.choice(["remove", "restore", "move", "mark_fake", "mark_real", "merge", "keep", "undo", "undo"])
        if action == "undo":
            candidates = sorted(set(replay.done) - replay.undone)
            if not candidates:
                continue
            did = rng.choice(candidates)
            if replay.conflicts(did):
                with pytest.raises(UndoConflict):
                    store.undo(did, reviewer="r")
                n_conflicts += 1
            else:
                store.undo(did, reviewer="r")
                replay.undo(did)
            continue
        if action == "merge":
            present = sorted({lab[0] for lab in replay.labels.values()})
            identity = rng.choice(present)
            target = rng.choice([n for n in ("A", "B", "C", "D") if n != identity])
            did = store.decide("merge", reviewer="r", identity=identity, target_identity=target)
            replay.decide(did, "merge", [], identity, target)
            continue
        chosen = rng.sample(ids, rng.randint(1, 3))
        target = rng.choice(["A", "B", "C", "D"]) if action == "move" else None
        did = store.decide(action, reviewer="r", image_ids=chosen, target_identity=target)
        replay.decide(did, action, chosen, target=target)
    assert n_conflicts > 0 and replay.undone and len(replay.done) > 50  # the sequence exercised what it should

    expected_flags = {f: ("resolved" if live else "open") for f, live in replay.answers.items()}
    assert _state(store) == (replay.labels, expected_flags)
    raw = sqlite3.connect(store.path)  # wreck the cached columns behind the store's back
    with raw:
        raw.execute("UPDATE images SET identity='garbage', is_fake=1-is_fake, removed=1")
        raw.execute("UPDATE flags SET status=CASE status WHEN 'open' THEN 'resolved' ELSE 'open' END")
    raw.close()
    assert _state(store) != (replay.labels, expected_flags)
    store.rebuild()
    assert _state(store) == (replay.labels, expected_flags)


# ---- two writers at once ---------------------------------------------------------------------------------------------
def _writer(path: str, worker: int, n: int, start) -> None:
    store = LabelStore(path)
    ids = sorted(store.image_ids([f.path for f in _found()]).values())
    rng = random.Random(worker)
    start.wait(timeout=60)  # both processes are connected before either writes
    for k in range(n):
        action = rng.choice(["remove", "restore", "mark_fake", "mark_real", "move"])
        store.decide(
            action, reviewer=f"writer{worker}", image_ids=[rng.choice(ids)],
            target_identity=f"T{worker}" if action == "move" else None, note=f"{worker}:{k}",
        )
        # A pause between decisions, as any real writer has: SQLite's busy handler backs off in sleeps, so a writer
        # committing in a tight loop could re-take the lock every time and the two would merely run one after the other.
        time.sleep(rng.uniform(0, 0.004))
    store.close()


def test_two_processes_writing_decisions_at_once_lose_and_duplicate_nothing(store):
    n = 300
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(store.path), w, n, start)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]

    log = store.history(limit=10 * n)
    notes = [d.note for d in log]
    assert len(notes) == 2 * n and set(notes) == {f"{w}:{k}" for w in (1, 2) for k in range(n)}
    assert len({d.id for d in log}) == 2 * n
    assert all(len(d.image_ids) == 1 for d in log)
    per_writer = {w: [d.note for d in reversed(log) if d.reviewer == f"writer{w}"] for w in (1, 2)}
    assert per_writer == {w: [f"{w}:{k}" for k in range(n)] for w in (1, 2)}  # each writer's order is kept
    order = [d.reviewer for d in reversed(log)]
    assert sum(a != b for a, b in zip(order, order[1:])) > 10  # the writers took turns, not one after the other
    cached = _labels(store)
    store.rebuild()
    assert _labels(store) == cached  # the cache both writers kept agrees with the log
