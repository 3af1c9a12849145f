"""`python -m curation.predict`: a tiny challenge-layout test set -> pair_id,similarity with fallbacks for broken pairs.

The test set holds real glint24 crops (already ArcFace-aligned, so `--aligned` and the fast MobileFaceNet ONNX model)
saved as JPEG in `images/<pair_id>/{0,1}.jpg`, plus a pair whose 1.jpg is truncated and a pair without a 1.jpg. The
expected similarities are computed independently: the JPEGs decoded with Pillow, the model's raw output normalised and
multiplied with numpy, no embedding pass, no cache.
"""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curation import predict
from curation.scoring.predict import FALLBACK_SCORE, predict_pairs
from embeddings.embedders import make_embedder
from embeddings.options import EmbedOptions

IDENTITIES = ("Tom Hanks", "Will Smith", "Jennifer Aniston", "Keanu Reeves")
BROKEN = "truncated"  # kinds of pairs whose 1.jpg cannot be embedded
MISSING = "missing"


def make_test_set(glint_dir: Path, test_dir: Path, seed: int = 0) -> pd.DataFrame:
    """Write TEST_DIR/images/<pair_id>/{0,1}.jpg: 2 same-person and 2 different-person pairs per identity in
    IDENTITIES, one pair with a truncated 1.jpg and one without 1.jpg. Pair ids are random 8-digit numbers, written in
    random order. Returns one row per pair: pair_id, kind (same|different|truncated|missing), img1, img2 (relative to
    TEST_DIR)."""
    rng = np.random.default_rng(seed)
    photos = {name: sorted((glint_dir / name).glob("*.png"))[:5] for name in IDENTITIES}
    sources = []
    for k, name in enumerate(IDENTITIES):
        other = IDENTITIES[(k + 1) % len(IDENTITIES)]
        sources += [("same", photos[name][0], photos[name][1]), ("same", photos[name][2], photos[name][3]),
                    ("different", photos[name][0], photos[other][2]), ("different", photos[name][4], photos[other][4])]
    sources += [(BROKEN, photos[IDENTITIES[0]][4], photos[IDENTITIES[1]][0]),
                (MISSING, photos[IDENTITIES[2]][4], None)]
    ids = [f"{i:08d}" for i in rng.choice(10**8, len(sources), replace=False)]
    rows = []
    for i in rng.permutation(len(sources)):
        kind, first, second = sources[i]
        folder = test_dir / "images" / ids[i]
        folder.mkdir(parents=True)
        for n, src in ((0, first), (1, second)):
            if src is not None:
                Image.open(src).convert("RGB").save(folder / f"{n}.jpg", quality=95)
        if kind == BROKEN:
            data = (folder / "1.jpg").read_bytes()
            (folder / "1.jpg").write_bytes(data[: len(data) // 3])
        rows.append((ids[i], kind, f"images/{ids[i]}/0.jpg", f"images/{ids[i]}/1.jpg"))
    return pd.DataFrame(rows, columns=["pair_id", "kind", "img1", "img2"])


def independent_similarity(embedder, test_dir: Path, pairs: pd.DataFrame, flip: bool = False) -> np.ndarray:
    """Cosine of each pair from the model's raw output on the decoded JPEGs: no pass, no cache, no batching. With
    flip, the raw outputs of the crop and of its mirror image are averaged."""
    def unit(name: str) -> np.ndarray:
        crop = np.array(Image.open(test_dir / name).convert("RGB"))
        raw = embedder.forward(crop[None])[0].astype(np.float64)
        if flip:
            raw = (raw + embedder.forward(np.ascontiguousarray(crop[None, :, ::-1]))[0]) / 2
        return raw / np.linalg.norm(raw)

    return np.array([unit(a) @ unit(b) for a, b in zip(pairs["img1"], pairs["img2"])])


@pytest.fixture(scope="module")
def embedder(models_dir):
    return make_embedder(f"onnx:{models_dir / 'mobilefacenet.onnx'}", device="cpu")


@pytest.fixture(scope="module")
def test_set(glint_dir, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    test_dir = tmp_path_factory.mktemp("predict") / "test_public"
    return test_dir, make_test_set(glint_dir, test_dir)


def test_predict_pairs_scores_every_pair_in_order_with_fallbacks(test_set, embedder, tmp_path):
    test_dir, pairs = test_set
    pred = predict_pairs(test_dir, embedder, cache_dir=tmp_path / "cache", fallback_score=-3.5,
                         options=EmbedOptions(aligned=True, workers=0, progress=False))
    expected_ids = sorted(pairs["pair_id"], key=int)
    assert pred.scores.columns.tolist() == ["pair_id", "similarity"]
    assert pred.scores["pair_id"].tolist() == expected_ids and len(expected_ids[0]) == 8  # zeros kept, id order

    by_id = pairs.set_index("pair_id").loc[pred.scores["pair_id"]].reset_index()
    broken = by_id["kind"].isin([BROKEN, MISSING]).to_numpy()
    assert (pred.scores["similarity"][broken] == -3.5).all()
    problems = pred.problems.set_index("pair_id")
    assert sorted(problems.index) == sorted(by_id["pair_id"][broken])
    truncated = by_id.loc[by_id["kind"] == BROKEN].iloc[0]
    missing = by_id.loc[by_id["kind"] == MISSING].iloc[0]
    assert problems.loc[truncated["pair_id"], "image"] == truncated["img2"]
    assert problems.loc[truncated["pair_id"], "status"].startswith("unreadable")
    assert problems.loc[missing["pair_id"], "image"] == missing["img2"]
    assert "No such file" in problems.loc[missing["pair_id"], "status"]
    assert "2 of 18 pair(s)" in pred.problem_summary and "2 unreadable" in pred.problem_summary

    good = by_id[~broken]
    reference = independent_similarity(embedder, test_dir, good)
    # the embedding cache stores float16: cosines agree to ~1e-3
    np.testing.assert_allclose(pred.scores["similarity"][~broken], reference, atol=2e-3)
    same = pred.scores["similarity"][(by_id["kind"] == "same").to_numpy()]
    different = pred.scores["similarity"][(by_id["kind"] == "different").to_numpy()]
    assert same.mean() > different.mean() + 0.3, (same.mean(), different.mean())


def test_cli_writes_submission_and_problems_in_csv_order_and_reuses_the_cache(test_set, models_dir, tmp_path, capsys):
    test_dir, pairs = test_set
    listed = pairs.sample(frac=1, random_state=3)[["pair_id", "img1", "img2"]]  # not in pair_id order
    csv = tmp_path / "pairs.csv"
    listed.to_csv(csv, index=False)
    out = tmp_path / "sub" / "submission.csv"
    argv = [str(test_dir), "--pairs", str(csv), "--model", f"onnx:{models_dir / 'mobilefacenet.onnx'}", "--aligned",
            "--device", "cpu", "--workers", "0", "--batch-size", "4", "--out", str(out), "--no-progress"]
    assert predict.main(argv) == 0
    first, err = capsys.readouterr()
    sub = pd.read_csv(out, dtype={"pair_id": str})
    assert sub.columns.tolist() == ["pair_id", "similarity"]
    assert sub["pair_id"].tolist() == listed["pair_id"].tolist()  # the CSV's order, ids as written
    broken = pairs.set_index("pair_id").loc[sub["pair_id"], "kind"].isin([BROKEN, MISSING]).to_numpy()
    assert (sub["similarity"][broken] == FALLBACK_SCORE).all() and not (sub["similarity"][~broken] == 0).any()
    problems = pd.read_csv(tmp_path / "sub" / "submission.problems.csv", dtype=str)
    assert problems.columns.tolist() == ["pair_id", "image", "status"]
    assert sorted(problems["pair_id"]) == sorted(sub["pair_id"][broken])
    assert "scored 18 pairs" in first and "2 of 18 pair(s)" in first and "submission.problems.csv" in first
    readable = {(test_dir / n).read_bytes() for n in pairs[["img1", "img2"]].to_numpy()[~pairs["kind"].isin(
        [BROKEN, MISSING]).to_numpy()].ravel()} | {(test_dir / n).read_bytes() for n in pairs["img1"]}
    assert f"{len(readable)} embedded in this run" in first  # each distinct image once
    assert (tmp_path / "sub" / "cache").is_dir()  # the default cache: beside the output
    scored = listed.reset_index(drop=True)[~broken]  # flip fusion is the default for submissions
    model = make_embedder(f"onnx:{models_dir / 'mobilefacenet.onnx'}", device="cpu")
    reference = independent_similarity(model, test_dir, scored, flip=True)
    np.testing.assert_allclose(sub["similarity"][~broken], reference, atol=2e-3)  # float16 cache: ~1e-3

    assert predict.main(argv) == 0  # again: everything comes from the cache, the same file comes out
    second, _ = capsys.readouterr()
    assert "0 embedded in this run" in second
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype={"pair_id": str}), sub)
    manifest = json.loads((tmp_path / "sub" / "submission.manifest.json").read_text())
    assert manifest["files"] == ["submission.csv", "submission.problems.csv"] and manifest["n_pairs"] == 18


def test_a_file_predict_did_not_write_is_never_overwritten(test_set, tmp_path, capsys):
    test_dir, _ = test_set
    out = tmp_path / "notes.csv"
    out.write_text("my own notes")
    assert predict.main([str(test_dir), "--out", str(out), "--aligned", "--no-progress"]) == 2
    assert f"{out} exists and was not written by this tool" in capsys.readouterr().err
    assert out.read_text() == "my own notes" and list(tmp_path.iterdir()) == [out]  # refused before any work


@pytest.mark.parametrize("bad,reason", [("../outside.jpg", "points outside"), ("/etc/passwd", "absolute path"),
                                        ("images/../../x.jpg", "points outside")])
def test_pairs_csv_paths_never_leave_the_test_folder(test_set, bad, reason, tmp_path, capsys):
    test_dir, pairs = test_set
    listed = pairs[["pair_id", "img1", "img2"]].copy()
    listed.iloc[3, 2] = bad
    csv = tmp_path / "pairs.csv"
    listed.to_csv(csv, index=False)
    code = predict.main([str(test_dir), "--pairs", str(csv), "--out", str(tmp_path / "sub.csv"), "--aligned"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {csv}: line 5: img2 {bad!r}") and reason in lines[0], err
    assert not (tmp_path / "sub.csv").exists()


def test_bad_inputs_give_one_line_and_exit_2(test_set, tmp_path, capsys):
    test_dir, _ = test_set
    cases = [
        ([str(tmp_path), "--out", str(tmp_path / "s.csv")], "no images/ folder"),
        ([str(test_dir), "--model", "onnx:nowhere.onnx", "--out", str(tmp_path / "s.csv")], "nowhere.onnx"),
        ([str(test_dir), "--model", "resnet", "--out", str(tmp_path / "s.csv")], "unknown embedder"),
        ([str(test_dir), "--detector", "scrfd:nowhere.onnx", "--out", str(tmp_path / "s.csv"), "--no-progress"],
         "nowhere.onnx"),
        ([str(test_dir), "--fallback-score", "nan", "--out", str(tmp_path / "s.csv")], "finite"),
        ([str(test_dir), "--pairs", str(tmp_path / "none.csv"), "--out", str(tmp_path / "s.csv")], "no such file"),
    ]
    for argv, message in cases:
        assert predict.main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (argv, lines)
    assert not (tmp_path / "s.csv").exists()


def test_no_face_found_gets_the_fallback_with_dlib_detection(lfw_dir, embedder, tmp_path):
    """Unaligned LFW photos through the dlib detector; a blank photo has no face."""
    a, b = sorted((lfw_dir / "Colin_Powell").glob("*.jpg"))[:2]
    c = sorted((lfw_dir / "Al_Gore").glob("*.jpg"))[0]
    layout = {"00000001": (a, b), "00000002": (a, c), "00000003": (c, None)}
    for pair_id, (first, second) in layout.items():
        folder = tmp_path / "test" / "images" / pair_id
        folder.mkdir(parents=True)
        Image.open(first).save(folder / "0.jpg")
        (Image.open(second) if second else Image.new("RGB", (150, 150), (128, 128, 128))).save(folder / "1.jpg")
    pred = predict_pairs(tmp_path / "test", embedder, cache_dir=tmp_path / "cache",
                         options=EmbedOptions(workers=0, progress=False))
    assert pred.scores["pair_id"].tolist() == ["00000001", "00000002", "00000003"]
    same, different, blank = pred.scores["similarity"]
    assert blank == FALLBACK_SCORE and same > different + 0.3
    assert pred.problems.values.tolist() == [["00000003", "images/00000003/1.jpg", pred.problems["status"][0]]]
    assert pred.problems["status"][0].startswith("no_face")


def test_help_shows_examples_and_the_fallback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("examples:", "python -m curation.predict test_public", "--pairs", "--fallback-score",
                   ".problems.csv", "--aligned", "--cache", "pair_id order"):
        assert needle in text, needle
