"""curation.review: the functions the review app calls, on a real work folder built from ../shared photos."""
from __future__ import annotations

import io
import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from labels.cli import UserError
from curation import review as rv
from embeddings import cache
from labels.store import FoundImage, LabelStore
from tests.review_workdir import BROKEN, DUPLICATE, EDGE, FAKE, MERGE, OUTLIER, build_workdir


@pytest.fixture(scope="module")
def built(tmp_path_factory, glint_dir, models_dir) -> Path:
    return build_workdir(glint_dir, models_dir / "mobilefacenet.onnx", tmp_path_factory.mktemp("review"))


@pytest.fixture
def work(built, tmp_path) -> rv.WorkFolder:
    shutil.copytree(built, tmp_path / "work")
    return rv.WorkFolder.open(tmp_path / "work")


@pytest.fixture
def store(work):
    with LabelStore.open(work.root) as s:
        yield s


def image_id(store: LabelStore, path: str) -> int:
    return store.image_ids([path])[path]


def test_work_folder_without_store_says_how_to_make_one(tmp_path):
    with pytest.raises(UserError, match="curation.clean"):
        rv.WorkFolder.open(tmp_path)


def test_queue_orders_by_severity_times_uncertainty(work, store):
    report = rv.read_report(work)
    summary = rv.summarize_report(report)
    snap = rv.queue_snapshot(store, summary)
    # independent computation: spread = std of the cross-identity histogram,
    # worth = sum over open flags of severity * max(0.05, 1 / (1 + ((score - t) / scale)^2)), 0.5 without a score,
    # scale = the spread for cosines, t / 2 for the merge score (a share of cross pairs, not a cosine)
    hist = report["similarity_histogram"]
    centres = (np.array(hist["bin_edges"][:-1]) + np.array(hist["bin_edges"][1:])) / 2
    spread = np.repeat(centres, hist["cross_identity"]).std()
    assert summary.impostor_spread == pytest.approx(spread)
    flags = pd.read_csv(work.root / "flags.csv").set_index("flag")

    def u(score, t, scale=spread):
        return max(0.05, 1 / (1 + ((score - t) / scale) ** 2))

    expected = {
        "Hugh Laurie": 1.5 * u(flags.score["outlier"], EDGE) + 1.0 * u(flags.score["fake_mismatch"], EDGE),
        "Jennifer A": 3.0 * u(flags.score["merge"], MERGE, MERGE / 2),
        "Halle Berry": 0.25 * 0.5,
    }
    assert snap.total == 3
    assert dict(zip(snap.frame.identity, snap.frame.worth)) == pytest.approx(expected)
    assert snap.frame.identity.tolist() == sorted(expected, key=expected.get, reverse=True)
    page = rv.queue_page(store, snap)
    hugh = page.rows.set_index("identity").loc["Hugh Laurie"]
    assert (hugh.n_open, hugh.n_photos, hugh.open_flags) == (2, 8, "1 outlier, 1 fake_mismatch")
    only = rv.queue_snapshot(store, summary, kinds=["unreadable"])
    assert only.frame.identity.tolist() == ["Halle Berry"]
    page2 = rv.queue_page(store, snap, offset=1, limit=1)
    assert page2.rows.identity.tolist() == snap.frame.identity.tolist()[1:2] and page2.total == 3
    assert rv.queue_page(store, snap, offset=5).rows.empty


def test_queue_snapshot_updates_incrementally_like_a_full_pass(work, store):
    summary = rv.summarize_report(rv.read_report(work))
    snap = rv.queue_snapshot(store, summary)
    assert rv.queue_snapshot(store, summary, previous=snap) is snap  # nothing changed: nothing recomputed
    outlier = image_id(store, OUTLIER)
    steps = [
        lambda: rv.apply_action(store, "remove", reviewer="ana", image_ids=[outlier]),
        lambda: rv.apply_action(store, "merge", reviewer="ana", identity="Jennifer A", target_identity="Jennifer Aniston"),
        lambda: rv.undo_decision(store, 1, reviewer="bo"),
    ]
    for step in steps:
        step()
        snap = rv.queue_snapshot(store, summary, previous=snap)
        full = rv.queue_snapshot(store, summary)
        pd.testing.assert_frame_equal(snap.frame, full.frame, check_dtype=False)
    assert snap.frame.identity.tolist() == ["Hugh Laurie", "Halle Berry"]  # merge answered, remove undone
    other = rv.summarize_report({"thresholds": {"edge": 0.9}})
    assert rv.queue_snapshot(store, other, previous=snap).frame.worth.tolist() != snap.frame.worth.tolist()


def test_next_identity_follows_the_queue_even_when_the_current_one_leaves_it(work, store):
    summary = rv.summarize_report(rv.read_report(work))
    snap = rv.queue_snapshot(store, summary)
    order = snap.frame.identity.tolist()
    assert rv.next_identity(snap, order[0], 0) == (order[1], 1)
    rv.apply_action(store, "keep", reviewer="ana", flag_ids=store.flags(identity=order[0], status="open").id.tolist())
    snap = rv.queue_snapshot(store, summary, previous=snap)
    assert rv.next_identity(snap, order[0], 0) == (order[1], 0)  # answered: the next moved up to rank 0
    assert rv.next_identity(snap, order[2], 1) == (None, 2)


def test_position_is_saved_per_reviewer(store):
    rv.save_position(store, "ana", {"view": "identity", "identity": "Hugh Laurie", "rank": 0})
    assert rv.load_position(store, "ana")["identity"] == "Hugh Laurie"
    assert rv.load_position(store, "bo") == {}


def test_identity_view_groups_components_and_shows_suggestions(work, store):
    clean = rv.load_clean(work)
    view = rv.identity_view(store, clean, "Hugh Laurie")
    by_path = view.photos.set_index("path")
    assert by_path.section[OUTLIER] == "isolated" and by_path.section[FAKE] == "fake"
    sections = view.photos.section.tolist()
    assert sections == sorted(sections, key=list(rv.SECTIONS).index)  # main first, deepfakes after real photos
    main = view.photos[view.photos.section == "main"]
    assert len(main) >= 4 and main.sim_to_main.is_monotonic_decreasing
    flag = by_path.flag_list[OUTLIER][0]
    assert (flag["kind"], flag["status"], flag["suggested_identity"]) == ("outlier", "open", "Barack Obama")
    assert view.flagged_ids() == [image_id(store, OUTLIER), image_id(store, FAKE)]
    assert by_path.flag_list[FAKE][0]["suggested_identity"] is None and by_path.flag_list[FAKE][0]["kind"] == "fake_mismatch"
    # the planted photo is Obama: it looks much more like Obama's photos than like Hugh Laurie's
    assert flag["sim_to_suggested"] > 0.4 > by_path.sim_to_main[OUTLIER]
    assert set(view.suggestions) == {"Barack Obama"}
    assert (view.suggestions["Barack Obama"].path.str.startswith("Barack Obama/")).all()
    # heatmap: real kept photos, main component first, values = cosine of the stored embeddings
    emb = np.load(work.embeddings).astype(np.float32)
    rows = by_path.set_index("image_id").loc[view.heatmap_ids, "emb_row"].astype(int).to_numpy()
    assert np.allclose(view.similarity, np.clip(emb[rows] @ emb[rows].T, -1, 1), atol=1e-6)  # float16 norms can pass 1
    assert view.heatmap_ids[: len(main)] == main.image_id.tolist() and image_id(store, FAKE) not in view.heatmap_ids
    fig = rv.heatmap_figure(view)
    assert fig.data[0].z.shape == (len(rows), len(rows)) and len(fig.layout.shapes) == 2  # one component boundary
    with pytest.raises(UserError, match="no photos"):
        rv.identity_view(store, clean, "Nobody")


def test_identity_view_before_any_clean(work, store):
    for p in (work.nodes, work.embeddings):
        p.unlink()
    assert rv.load_clean(work) is None
    view = rv.identity_view(store, None, "Hugh Laurie")
    assert view.similarity is None and "no clean yet" in view.notes[0]
    assert set(view.photos.section) == {"new", "fake"}


def test_actions_are_decisions_and_undo_reverses_them(work, store):
    clean = rv.load_clean(work)
    outlier, fake = image_id(store, OUTLIER), image_id(store, FAKE)
    out = rv.apply_action(store, "remove", reviewer="ana", image_ids=[outlier])
    row = store.images(ids=[outlier]).iloc[0]
    assert row.removed == 1 and store.flags(image_ids=[outlier]).status.tolist() == ["resolved"]
    assert rv.history_lines(store)[0]["text"].startswith(f"#{out.decision_id}") and "ana" in rv.history_lines(store)[0]["text"]
    rv.undo_decision(store, out.decision_id, reviewer="ana")
    assert store.images(ids=[outlier]).removed.item() == 0 and store.flags(image_ids=[outlier]).status.item() == "open"
    assert not rv.history_lines(store)[1]["undoable"]  # the undone one

    moved = rv.apply_action(store, "move", reviewer="ana", image_ids=[outlier], target_identity="Barack Obama")
    assert "moved 1 photo(s) to Barack Obama" in moved.message
    obama = rv.identity_view(store, clean, "Barack Obama").photos.set_index("path")
    assert obama.section[OUTLIER] == "new"  # not Obama's at the last clean, shown apart

    view = rv.identity_view(store, clean, "Hugh Laurie")
    kept = rv.apply_action(store, "keep", reviewer="bo", image_ids=[fake], flag_ids=view.open_flag_ids([fake]))
    assert "rejecting 1 flag" in kept.message and store.images(ids=[fake]).is_fake.item() == 1
    rv.apply_action(store, "mark_real", reviewer="bo", image_ids=[fake])
    assert store.images(ids=[fake]).is_fake.item() == 0
    with pytest.raises(UserError, match="nothing to change"):
        rv.apply_action(store, "mark_real", reviewer="bo", image_ids=[fake])

    merged = rv.apply_action(store, "merge", reviewer="bo", identity="Jennifer A", target_identity="Jennifer Aniston")
    assert store.images(identity="Jennifer A").empty and len(store.images(identity="Jennifer Aniston")) == 6
    assert store.flags(kind="merge").status.item() == "resolved" and "merged Jennifer A" in merged.message
    with pytest.raises(UserError, match="not a usable identity"):
        rv.apply_action(store, "move", reviewer="bo", image_ids=[fake], target_identity="../etc")


def test_split_moves_a_component_to_a_new_identity(work, store):
    view = rv.identity_view(store, rv.load_clean(work), "Hugh Laurie")
    isolated = view.photos[view.photos.section == "isolated"].image_id.tolist()
    name = rv.split_name(store, "Hugh Laurie", -1)
    assert name == "Hugh Laurie_split-1"
    with pytest.raises(UserError, match="already exists"):
        rv.apply_action(store, "split", reviewer="ana", identity="Hugh Laurie", image_ids=isolated,
                        target_identity="Barack Obama")
    out = rv.apply_action(store, "split", reviewer="ana", identity="Hugh Laurie", image_ids=isolated,
                          target_identity=name)
    assert sorted(store.images(identity=name).id) == sorted(isolated)
    assert store.flags(image_ids=[image_id(store, OUTLIER)]).status.item() == "resolved"
    assert rv.split_name(store, "Hugh Laurie", -1) == "Hugh Laurie_split-1_2"
    rv.undo_decision(store, out.decision_id, reviewer="ana")
    assert store.images(identity=name).empty


def test_two_reviewers_lose_and_duplicate_nothing(work):
    """Two sessions (two connections) deciding at once: every decision recorded once, a shared flag answered once."""
    a, b = LabelStore.open(work.root), LabelStore.open(work.root)
    photos = a.images(identity="Barack Obama").id.tolist() + a.images(identity="Halle Berry").id.tolist()
    mine = {"ana": photos[::2], "bo": photos[1::2]}
    outlier = image_id(a, OUTLIER)
    barrier = threading.Barrier(2)
    results: dict[str, list] = {"ana": [], "bo": []}

    def session(store: LabelStore, reviewer: str) -> None:
        shown = rv.identity_view(store, None, "Hugh Laurie").open_flag_ids([outlier])  # both see the same open flag
        barrier.wait()
        try:  # ... and both remove the photo at once
            results[reviewer].append(
                rv.apply_action(store, "remove", reviewer=reviewer, image_ids=[outlier], flag_ids=shown)
            )
        except UserError as exc:
            results[reviewer].append(str(exc))
        for pid in mine[reviewer]:
            rv.apply_action(store, "mark_fake", reviewer=reviewer, image_ids=[pid])
            rv.apply_action(store, "mark_real", reviewer=reviewer, image_ids=[pid])

    threads = [threading.Thread(target=session, args=(s, r)) for s, r in ((a, "ana"), (b, "bo"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    firsts = [results["ana"][0], results["bo"][0]]
    assert sum(isinstance(x, rv.Outcome) for x in firsts) == 1
    assert any(isinstance(x, str) and "already answered" in x for x in firsts)
    counts = Counter((d.reviewer, d.action) for d in a.history(limit=10_000))
    for reviewer in ("ana", "bo"):
        assert counts[(reviewer, "mark_fake")] == counts[(reviewer, "mark_real")] == len(mine[reviewer])
    assert counts.get(("ana", "remove"), 0) + counts.get(("bo", "remove"), 0) == 1
    assert (a.images(ids=photos).is_fake == 0).all()
    a.close()
    b.close()


def test_thumbnails_only_from_allowed_folders_and_placeholders_say_why(work, store, tmp_path):
    roots = rv.allowed_roots(store, work)
    view = rv.identity_view(store, rv.load_clean(work), "Halle Berry").photos.set_index("path", drop=False)
    path, reason = rv.photo_source(store, work, view.loc["Halle Berry/2071.png"])
    thumb = rv.load_thumbnail(path, roots, size=64)
    assert thumb.reason is None and Image.open(io.BytesIO(thumb.data)).size == (64, 64)
    assert view.section[BROKEN] == "unembedded"
    broken = rv.load_thumbnail(rv.photo_source(store, work, view.loc[BROKEN])[0], roots)
    assert broken.reason == "not an image" and Image.open(io.BytesIO(broken.data)).format == "PNG"
    (store.dataset_root / "Halle Berry/2071.png").rename(tmp_path / "gone.png")
    assert rv.load_thumbnail(path, roots).reason.startswith("cannot read file")
    assert rv.load_thumbnail(tmp_path / "gone.png", roots).reason == "outside the dataset and work folder"
    assert rv.load_thumbnail(store.dataset_root / ".." / ".." / "gone.png", roots).reason.startswith("outside")
    store.add_images([FoundImage("../../gone.png", 1, 1, "Halle Berry")])  # a store row that points outside
    assert rv.photo_source(store, work, {"path": "../../gone.png", "crop": None})[0] is None
    assert "outside the dataset" in rv.photo_source(store, work, {"path": "../../gone.png"})[1]
    row = view.loc["Halle Berry/2108.png"]  # the aligned crop cached by the embedding pass is shown when there is one
    crop = cache.crop_path(work.root / "cache", "align-test", row.sha256)
    crop.parent.mkdir(parents=True)
    shutil.copy(store.dataset_root / "Halle Berry/2108.png", crop)
    assert rv.photo_source(store, work, row, rv.crop_align_id({"align_id": "align-test"})) == (crop, None)
    assert rv.photo_source(store, work, row, None)[0] == store.dataset_root / "Halle Berry/2108.png"
    assert rv.crop_align_id({"align_id": "../x"}) is None


def test_search_and_identity_autocomplete(store):
    assert rv.find_identities(store, "Hugh") == ["Hugh Laurie"]
    assert rv.find_identities(store, "jennifer") == ["Jennifer A", "Jennifer Aniston"]  # case-insensitive substring
    assert rv.find_identities(store, "%") == []  # LIKE wildcards are literal
    hits = rv.search(store, "planted")
    assert hits.to_dict("records") == [
        {"match": "file", "identity": "Hugh Laurie", "path": OUTLIER, "image_id": image_id(store, OUTLIER),
         "n_open_flags": 2}
    ]
    assert rv.search(store, "  ").empty and rv.search(store, "zzz").empty


def test_overview_counts_and_similarity_histogram(work, store):
    ov = rv.overview(store, rv.read_report(work))
    assert (ov.n_open, ov.n_reviewed, ov.n_decisions) == (4, 0, 0)
    assert ov.n_photos == 27 and ov.n_identities == 5  # 3 x 6 + 6 Aniston + outlier, fake, broken
    assert ov.summary.thresholds == {"edge": EDGE, "duplicate": DUPLICATE, "merge": MERGE, "split": 0.5}
    assert ov.summary.how["edge"].endswith("(fixed for the test fixture)")
    assert ov.summary.noise_rate == pytest.approx(1 / 26)
    rv.apply_action(store, "remove", reviewer="ana", image_ids=[image_id(store, OUTLIER)])
    ov = rv.overview(store, rv.read_report(work))
    assert (ov.n_open, ov.n_reviewed, ov.n_removed) == (3, 1, 1)
    assert ov.flag_counts.set_index("kind").loc["outlier"].tolist() == [0, 1]
    fig = rv.similarity_histogram_figure(ov.summary)
    assert [t.name for t in fig.data] == ["same identity", "cross identity"]
    for trace, col in zip(fig.data, ("same_identity", "cross_identity")):  # densities integrate to 1
        assert float(np.sum(np.asarray(trace.y) * np.asarray(trace.width))) == pytest.approx(1.0)
    assert sorted(s.x0 for s in fig.layout.shapes) == [EDGE, DUPLICATE]  # the cosine thresholds only
    assert len(rv.flag_counts_figure(ov).data) == 2


def test_report_problems_are_reported_not_raised(work):
    work.report.write_text("{broken")
    with pytest.raises(UserError, match="report.json: not readable JSON"):
        rv.read_report(work)
    assert rv.summarize_report({}).histogram is None
    np.save(work.embeddings, np.zeros((3, 4), np.float16))
    with pytest.raises(UserError, match="does not match nodes.parquet"):
        rv.load_clean(work)


def test_typed_folders_stay_under_the_work_folder_or_cwd(work, tmp_path):
    assert rv.contained_folder("runs/a", work=work, cwd=tmp_path) == tmp_path / "runs" / "a"
    assert rv.contained_folder(str(work.root / "eval"), work=work, cwd=tmp_path / "x") == work.root / "eval"
    for bad in ("/etc", "../..", ""):
        with pytest.raises(UserError):
            rv.contained_folder(bad, work=work, cwd=tmp_path)


def test_training_history_and_evaluation_readers(work):
    from curation.scoring.evaluate import evaluate_scores
    from curation.scoring.metrics import verification_report

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200), np.zeros(400)]
    types = np.r_[["same"] * 200, ["different"] * 200, ["own_fake"] * 200]
    run = work.root / "runs" / "r1"
    run.mkdir(parents=True)
    records = []
    for step, sep in ((200, 2.0), (100, 1.0)):  # out of order on purpose
        scores = rng.normal(0, 1, 600) + sep * labels
        records.append({"step": step, "lr": 5e-6, "train_loss": 1 / step, "time": step,
                        **verification_report(scores, labels, types).to_dict()})
    (run / rv.HISTORY_FILE).write_text(json.dumps(records))
    assert rv.find_runs(work, rv.HISTORY_FILE, "runs") == [run]
    history = rv.read_history(run)
    assert history.step.tolist() == [100, 200] and history.eer.tolist() == [records[1]["eer"], records[0]["eer"]]
    figs = rv.training_figures(history)
    assert set(figs) == {"loss", "eer", "per_type"}
    assert list(figs["loss"].data[0].y) == [0.01, 0.005]
    per_type = {t.name: list(t.y) for t in figs["per_type"].data}
    assert per_type["own_fake"] == [records[1]["per_type"]["own_fake"]["rate"], records[0]["per_type"]["own_fake"]["rate"]]
    (run / rv.HISTORY_FILE).write_text("[1, 2]")
    with pytest.raises(UserError, match="list of validation records"):
        rv.read_history(run)
    with pytest.raises(UserError, match="train_on_clean"):
        rv.read_history(work.root)

    for name, sep in (("weak", 0.5), ("strong", 3.0)):  # written by curation.evaluate's own writer
        evaluate_scores(rng.normal(0, 1, 600) + sep * labels, labels, work.root / "eval" / name, types=types)
    runs = rv.find_runs(work, rv.METRICS_FILE, "eval")
    assert sorted(p.name for p in runs) == ["strong", "weak"]
    table, metrics = rv.evaluation_table(runs)
    assert table.loc["strong", "eer"] < table.loc["weak", "eer"]
    figs = rv.evaluation_figures(metrics)
    assert set(figs) == {"roc", "det", "per_type"}
    assert {t.name for t in figs["roc"].data} >= {"strong", "weak"}
    bars = {t.name: dict(zip(t.x, t.y)) for t in figs["per_type"].data}
    assert bars["weak"]["own_fake"] == metrics["weak"]["per_type"]["own_fake"]["rate"]
    hist = rv.scores_figure(work.root / "eval" / "weak", threshold=metrics["weak"]["eer_threshold"])
    assert sum(len(t.y) > 0 for t in hist.data) == 3
    with pytest.raises(UserError, match="neither metrics.json"):
        rv.evaluation_table([work.root])
