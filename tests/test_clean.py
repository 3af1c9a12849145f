"""`python -m curation.clean` end to end: real LFW photos with the dlib embedder, and the --embeddings/--index mode."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curation import clean
from curation.flagging import demo
from curation.flagging.noise import list_identities, synthetic_embeddings
from labels.cli import UserError
from labels.store import LabelStore


@pytest.fixture(scope="module")
def lfw_demo(lfw_dir, tmp_path_factory):
    """The demo path on 7 local LFW identities (12 photos each): plant noise, clean, score; then run it again."""
    tmp = tmp_path_factory.mktemp("demo")
    src = tmp / "src"
    src.mkdir()
    for name in sorted(list_identities(lfw_dir, 12))[:7]:
        (src / name).mkdir()
        for p in sorted((lfw_dir / name).iterdir())[:12]:
            (src / name / p.name).write_bytes(p.read_bytes())
    work = tmp / "work"
    argv = ["--from", str(src), "--workdir", str(work), "--demo-identities", "7", "--no-progress"]
    return work, argv


def test_demo_flags_planted_noise_with_right_suggestions(lfw_demo, capsys):
    work, argv = lfw_demo
    assert clean.main(argv) == 0
    out = capsys.readouterr().out
    assert "how the flags matched the planted noise" in out and "precision" in out
    assert f"streamlit run app.py -- --workdir {work}" in out
    truth = json.loads((work.parent / "work-data" / "truth.json").read_text())
    flags = pd.read_csv(work / "flags.csv", keep_default_na=False)
    assert list(flags.columns) == ["image", "identity", "flag", "component", "suggested_identity", "score"]
    moved = {k: v["person"] for k, v in truth["photos"].items() if v["kind"] == "moved"}
    assert len(moved) >= 5
    noisy = flags[flags.flag.isin(["outlier", "minority"])].set_index("image")
    caught = [k for k in moved if k in noisy.index]
    assert len(caught) >= 0.9 * len(moved), (sorted(moved), sorted(noisy.index))
    right = [k for k in caught if truth["folder_person"].get(noisy.suggested_identity[k]) == moved[k]]
    assert len(right) >= 0.8 * len(caught)
    wrong = {k for k, v in truth["photos"].items() if v["person"] != truth["folder_person"][k.split("/")[0]]}
    assert len(set(noisy.index) & wrong) >= 0.8 * len(noisy)  # precision
    report = json.loads((work / "report.json").read_text())
    assert report["planted_noise"]["recall_moved"] >= 0.9
    assert report["thresholds"]["edge"]["method"] == "target_fmr"
    assert set(report["timings"]) >= {"ingest", "align_embed", "flag_calibrate", "flag_graph", "flag_search_suggest"}
    hist = report["similarity_histogram"]
    assert len(hist["bin_edges"]) == len(hist["same_identity"]) + 1 == len(hist["cross_identity"]) + 1
    assert report["counts"] == flags.flag.value_counts().to_dict()
    nodes = pd.read_parquet(work / "clean" / "nodes.parquet")
    emb = np.load(work / "clean" / "embeddings.npy")
    with LabelStore.open(work) as store:
        images = store.images()
        assert len(nodes) == len(images) and set(nodes.image_id) == set(images.id)
        assert len(store.flags(status="open")) == len(flags)
    assert emb.dtype == np.float16 and emb.shape[0] == (nodes.emb_row >= 0).sum()
    ok = nodes[nodes.emb_row >= 0]
    assert np.allclose(np.linalg.norm(emb[ok.emb_row].astype(np.float32), axis=1), 1, atol=1e-2)
    # the main component photos of an identity are what nodes.parquet says, and sim_to_main is their mean cosine
    ident = ok[(ok.identity == ok.identity.iloc[0]) & ~ok.is_fake]
    main = ident[ident.component == 0]
    e = emb[main.emb_row].astype(np.float32)
    s = e @ e.T
    assert main.sim_to_main.iloc[0] == pytest.approx((s[0].sum() - s[0, 0]) / (len(main) - 1), abs=2e-3)


def test_second_run_resumes_from_the_embedding_cache(lfw_demo, capsys):
    work, argv = lfw_demo
    assert clean.main(argv) == 0
    out = capsys.readouterr().out
    assert "using the noisy copy made earlier" in out
    assert "0 aligned, 0 embedded in this run" in out


def test_bad_photos_empty_folders_and_one_photo_identities(lfw_dir, tmp_path, capsys):
    data = tmp_path / "data"
    people = sorted(list_identities(lfw_dir, 10))[:3]
    for name in people:
        (data / name).mkdir(parents=True)
        for p in sorted((lfw_dir / name).iterdir())[:4]:
            (data / name / p.name).write_bytes(p.read_bytes())
    (data / "Solo").mkdir()
    (data / "Solo" / "only.jpg").write_bytes(next((lfw_dir / people[0]).iterdir()).read_bytes())
    (data / "Empty").mkdir()
    Image.new("RGB", (150, 150), (128, 128, 128)).save(data / people[0] / "blank.jpg")
    (data / people[1] / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (data / people[1] / "zero.jpg").write_bytes(b"")
    copy = f"{people[2]}/copy of {people[0]}.jpg"
    (data / copy).write_bytes(sorted((data / people[0]).iterdir())[0].read_bytes())  # an exact copy, another identity
    assert clean.main([str(data), "--workdir", str(tmp_path / "w"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "single real photo" in out and "Solo" in out
    flags = pd.read_csv(tmp_path / "w" / "flags.csv", keep_default_na=False)
    assert (flags[flags.flag == "no_face"].image == f"{people[0]}/blank.jpg").all() and (flags.flag == "no_face").sum() == 1
    assert "Solo" not in set(flags.identity)
    # flags.csv holds every open flag of the store, whichever stage raised it: ingest's unreadable files and exact
    # duplicates too, and report.json counts the same rows
    unreadable = {f"{people[1]}/broken.jpg", f"{people[1]}/zero.jpg"}
    assert set(flags.image[flags.flag == "unreadable"]) == unreadable
    assert copy in set(flags.image[(flags.flag == "duplicate") & (flags.suggested_identity == "")])  # ingest's
    with LabelStore.open(tmp_path / "w") as store:
        open_flags = store.flags(status="open")
        assert sorted(zip(open_flags.image.fillna(""), open_flags.kind)) == sorted(zip(flags.image, flags.flag))
        assert set(open_flags.source) == {"ingest", "clean"}
        ids = store.image_ids(sorted(unreadable))
        store.decide("remove", reviewer="ana", image_ids=[ids[f"{people[1]}/zero.jpg"]])  # answers its flag
    report = json.loads((tmp_path / "w" / "report.json").read_text())
    assert report["counts"] == flags.flag.value_counts().to_dict() and report["counts"]["unreadable"] == 2
    assert clean.main([str(data), "--workdir", str(tmp_path / "w"), "--no-progress"]) == 0
    again = pd.read_csv(tmp_path / "w" / "flags.csv", keep_default_na=False)
    assert set(again.image[again.flag == "unreadable"]) == {f"{people[1]}/broken.jpg"}  # answered: no longer open


def _index_dataset(tmp_path, n_ids=40, per=8, dtype=np.float16):
    emb, given, truth = synthetic_embeddings(n_ids, per, 32, moved=0.1, seed=5)
    emb = emb.astype(dtype)
    index = pd.DataFrame({"image": [f"id{g}/{i}.jpg" for i, g in enumerate(given)], "identity": [f"id{g}" for g in given],
                          "is_fake": 0})
    return emb, index, given, truth


def test_embeddings_mode_with_nan_rows_and_bad_index_rows(tmp_path, capsys):
    emb, index, given, truth = _index_dataset(tmp_path)
    emb[3] = np.nan
    index.loc[5, "identity"] = ""
    index.loc[6, "image"] = "../outside.jpg"
    index.loc[7, "image"] = index.image[8]
    n = len(index)
    extra = pd.DataFrame({"image": ["lonely/1.jpg", "ghost/1.jpg", "ghost/2.jpg"], "identity": ["lonely", "ghost", "ghost"],
                          "is_fake": [0, 1, 1]})
    index = pd.concat([index, extra], ignore_index=True)
    emb = np.vstack([emb, np.random.default_rng(0).standard_normal((3, 32)).astype(emb.dtype)])
    np.save(tmp_path / "emb.npy", emb)
    index.to_csv(tmp_path / "index.csv", index=False)
    work = tmp_path / "w"
    assert clean.main(["--embeddings", str(tmp_path / "emb.npy"), "--index", str(tmp_path / "index.csv"),
                       "--workdir", str(work), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "NaN" in out and "identity is empty" in out and "unsafe image path" in out and "same image path again" in out
    assert "lonely" in out and "only deepfakes" in out and "ghost" in out
    flags = pd.read_csv(work / "flags.csv", keep_default_na=False)
    noisy = flags[flags.flag.isin(["outlier", "minority"])]
    moved = {f"id{g}/{i}.jpg" for i, g in enumerate(given[:n]) if g != truth[i] and i not in (3, 5, 6, 7)}
    assert len(moved & set(noisy.image)) >= 0.9 * len(moved)
    assert len(set(noisy.image) - moved) <= 0.1 * len(noisy)
    sugg = dict(zip(noisy.image, noisy.suggested_identity))
    assert np.mean([sugg[k] == f"id{truth[int(k.split('/')[1][:-4])]}" for k in moved & set(sugg)]) >= 0.9
    nodes = pd.read_parquet(work / "clean" / "nodes.parquet")
    assert nodes.set_index("path").loc[index.image[3], "emb_row"] == -1
    with LabelStore.open(work) as store:
        assert len(store.images()) == n + 3 - 3  # three rows refused: empty identity, unsafe path, repeated path
        assert store.dataset_root == tmp_path.resolve()


def test_embeddings_mode_fresh_store_and_rerun_write_the_same_outputs(tmp_path):
    """A first clean flags while the empty store is filled beside it (from the index: the rows the store will hold,
    numbered 1, 2, ...); a second clean of the same work folder reads them back from the store. Both write the same
    nodes.parquet and flags.csv, with the ids the store gave."""
    emb, index, _, _ = _index_dataset(tmp_path)
    index.loc[4, "identity"] = ""  # a refused row: the ids of the rows after it are one less than their line
    np.save(tmp_path / "emb.npy", emb)
    index.to_csv(tmp_path / "index.csv", index=False)
    work = tmp_path / "w"
    args = ["--embeddings", str(tmp_path / "emb.npy"), "--index", str(tmp_path / "index.csv"), "--workdir", str(work),
            "--no-progress"]
    assert clean.main(args) == 0
    first = pd.read_parquet(work / "clean" / "nodes.parquet"), (work / "flags.csv").read_text()
    assert json.loads((work / "report.json").read_text())["timings"]["store_wait"] >= 0  # the fill ran beside
    assert clean.main(args) == 0
    assert "store_wait" not in json.loads((work / "report.json").read_text())["timings"]  # read back this time
    second = pd.read_parquet(work / "clean" / "nodes.parquet"), (work / "flags.csv").read_text()
    pd.testing.assert_frame_equal(first[0], second[0])
    assert first[1] == second[1] and "outlier" in first[1]
    with LabelStore.open(work) as store:
        stored = store.images()
    assert first[0].image_id.tolist() == stored.id.tolist() and first[0].path.tolist() == stored.path.tolist()
    assert len(stored) == len(index) - 1


def test_embeddings_mode_refuses_mismatched_rows_and_single_identity(tmp_path, capsys):
    emb, index, _, _ = _index_dataset(tmp_path, dtype=np.float32)
    np.save(tmp_path / "emb.npy", emb[:-1])
    index.to_csv(tmp_path / "index.csv", index=False)
    args = ["--embeddings", str(tmp_path / "emb.npy"), "--index", str(tmp_path / "index.csv"),
            "--workdir", str(tmp_path / "w")]
    assert clean.main(args) == 2
    err = capsys.readouterr().err
    assert "index.csv" in err and "emb.npy" in err and "rows" in err and "Traceback" not in err
    index.assign(identity="one").to_csv(tmp_path / "index.csv", index=False)
    np.save(tmp_path / "emb.npy", emb)
    assert clean.main(args + ["--workdir", str(tmp_path / "w2")]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert clean.main(args + ["--workdir", str(tmp_path / "w3"), "--threshold", "0.5", "--no-progress"]) == 0


def test_demo_offline_says_how_to_use_local_photos(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "LFW_URL", "http://127.0.0.1:9/lfw.tgz")
    monkeypatch.setenv("FACECUR_CACHE", str(tmp_path / "cache"))
    assert clean.main(["--workdir", str(tmp_path / "w"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--from DIR" in err[0]


def test_empty_dataset_and_identical_embeddings(tmp_path, capsys):
    (tmp_path / "data" / "nobody").mkdir(parents=True)
    assert clean.main([str(tmp_path / "data"), "--workdir", str(tmp_path / "w"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    emb = np.ones((12, 8), np.float32) / np.sqrt(8)  # every photo the same vector
    np.save(tmp_path / "emb.npy", emb)
    pd.DataFrame({"image": [f"p{i % 3}/{i}.jpg" for i in range(12)], "identity": [f"p{i % 3}" for i in range(12)]}).to_csv(
        tmp_path / "index.csv", index=False)
    assert clean.main(["--embeddings", str(tmp_path / "emb.npy"), "--index", str(tmp_path / "index.csv"),
                       "--workdir", str(tmp_path / "w2"), "--no-progress"]) == 0
    assert "(nearly) identical" in capsys.readouterr().out


def test_faiss_index_and_chunk_options_reach_the_flagging_and_keep_the_flags(tmp_path, capsys):
    emb, index, _, _ = _index_dataset(tmp_path)
    scale = np.random.default_rng(1).uniform(0.5, 20, (len(emb), 1))
    np.save(tmp_path / "emb.npy", (emb.astype(np.float64) * scale).astype(np.float16))  # raw features, not unit rows
    index.to_csv(tmp_path / "index.csv", index=False)
    base = ["--embeddings", str(tmp_path / "emb.npy"), "--index", str(tmp_path / "index.csv"), "--no-progress"]
    assert clean.main([*base, "--workdir", str(tmp_path / "a")]) == 0
    assert clean.main([*base, "--workdir", str(tmp_path / "b"), "--faiss-index", "HNSW32", "--chunk-rows", "7"]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    config = report["thresholds"]["config"]
    assert (config["faiss_index"], config["chunk_rows"]) == ("HNSW32", 7)
    columns = ["image", "identity", "flag", "suggested_identity"]
    a, b = (pd.read_csv(tmp_path / w / "flags.csv", keep_default_na=False)[columns] for w in "ab")
    pd.testing.assert_frame_equal(a.sort_values(columns, ignore_index=True), b.sort_values(columns, ignore_index=True))
    written = np.load(tmp_path / "b" / "clean" / "embeddings.npy").astype(np.float64)  # what the app's cosines use
    unit = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    assert written.shape == unit.shape and np.abs(written - unit).max() < 2e-3
    capsys.readouterr()
    assert clean.main([*base, "--workdir", str(tmp_path / "c"), "--chunk-rows", "0"]) == 2
    assert "--chunk-rows must be at least 1" in capsys.readouterr().err


def test_a_face_crop_photo_without_a_face_is_embedded_and_flagged_weak_alignment(lfw_dir, tmp_path, capsys):
    """LFW photos are face crops: a photo where dlib finds no face (here: the face covered by a grey square) is
    embedded from where the other photos' faces sit, stays in the graphs and is flagged weak_alignment, not no_face."""
    data = tmp_path / "data"
    for name in sorted(list_identities(lfw_dir, 8))[:4]:
        (data / name).mkdir(parents=True)
        for p in sorted((lfw_dir / name).iterdir())[:8]:
            (data / name / p.name).write_bytes(p.read_bytes())
    victim = sorted((data / name).iterdir())[0]
    pixels = np.array(Image.open(victim))
    pixels[30:120, 30:120] = 128
    Image.fromarray(pixels).save(victim)
    work = tmp_path / "work"
    assert clean.main([str(data), "--workdir", str(work), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 face-crop photo(s) where no face was found, or only a bystander's off-centre one" in out
    with LabelStore.open(work) as store:
        flags = store.flags(status="open")
    weak = flags[flags.kind == "weak_alignment"]
    assert weak.image.tolist() == [f"{name}/{victim.name}"] and not (flags.kind == "no_face").any()
    nodes = pd.read_parquet(work / "clean" / "nodes.parquet").set_index("path")
    assert nodes.loc[f"{name}/{victim.name}", "emb_row"] >= 0  # embedded, in the graph
    report = json.loads((work / "report.json").read_text())
    assert report["weak_alignment"] == 1 and report["embedding_processes"] >= 1


def test_load_index_skips_each_bad_row_once_for_its_first_problem(tmp_path):
    # (image, identity, is_fake, the problem expected: "" for a usable row), written by hand from the rules; a path
    # seen before counts as a repeat even when its first row was itself skipped (as the row-by-row check did)
    rows = [
        ("a/1.jpg", "A", "0", ""), ("", "A", "1", "path"), ("/abs.jpg", "B", "0", "path"), ("x/../y.jpg", "B", "0", "path"),
        ("c:/x.jpg", "C", "yes", "path"), ("d/1.jpg", "D", "maybe", "fake"), ("e/1.jpg", "a/b", "0", "identity"),
        ("a/1.jpg", "A", "0", "again"), ("f\\g.jpg", " F ", "true", ""), ("..", "A", "0", "path"),
        ("a/..b.jpg", "A", "0", ""), ("h/1.jpg", " ", "0", "identity"), ("e/1.jpg", "E", "0", "again"),
        ("q/r:s.jpg", "Q", "0", ""), ("k/1.jpg", "..", "bad", "fake"),
    ]
    pd.DataFrame([r[:3] for r in rows], columns=["image", "identity", "is_fake"]).to_csv(tmp_path / "i.csv", index=False)
    np.save(tmp_path / "e.npy", np.zeros((len(rows), 4), np.float32))
    _, index, messages = clean.load_index(tmp_path / "e.npy", tmp_path / "i.csv")
    assert index.ok.tolist() == [r[3] == "" for r in rows]
    assert index.image[8] == "f/g.jpg" and index.identity[8] == "F"
    lines = {"path": [3, 4, 5, 6, 11], "fake": [7, 16], "identity": [8, 13], "again": [9, 14]}  # CSV lines: row + 2
    assert [m.split(", ")[0].split(": ")[1] for m in messages] == [f"{len(v)} row(s) skipped" for v in lines.values()]
    for m, shown in zip(messages, lines.values()):
        assert m.endswith(f"(CSV lines {', '.join(map(str, shown))})")


def test_load_index_reads_ragged_and_odd_files_as_the_c_parser_does(tmp_path):
    """pyarrow reads a well-formed index; what it refuses (a short row, a line of spaces, Latin-1 bytes) is read by the
    C parser as before: the short row's identity is "" (skipped), the blank line is dropped, an undecodable file is
    a UserError. Quoted commas and quotes, BOM and CRLF read the same either way."""
    np.save(tmp_path / "e.npy", np.zeros((3, 4), np.float32))
    well_formed = '\ufeffimage,identity\r\n"a/1,x.jpg",A\r\n"a/""q"".jpg",A\r\nb/1.jpg,007\r\n'
    ragged = "image,identity\na/1.jpg,A\n   \na/2.jpg\nb/1.jpg,B\n"
    for name, text in (("well", well_formed), ("ragged", ragged)):
        (tmp_path / f"{name}.csv").write_text(text, encoding="utf-8")
        _, index, messages = clean.load_index(tmp_path / "e.npy", tmp_path / f"{name}.csv")
        c_parser = pd.read_csv(tmp_path / f"{name}.csv", dtype=str, keep_default_na=False)
        assert index.image.tolist() == c_parser.image.str.strip().tolist()
        assert index.identity.tolist() == c_parser.identity.tolist()
    assert index.ok.tolist() == [True, False, True] and "identity is empty" in messages[0]
    assert clean.load_index(tmp_path / "e.npy", tmp_path / "well.csv")[1].identity.tolist() == ["A", "A", "007"]
    (tmp_path / "latin.csv").write_bytes("image,identity\nb/é.jpg,B\n".encode("latin-1"))
    with pytest.raises(UserError, match="not a readable CSV"):
        clean.load_index(tmp_path / "e.npy", tmp_path / "latin.csv")
