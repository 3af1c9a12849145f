"""`python -m curation.evaluate`: scoring a submission by pair_id, refusing broken files, a model on labelled image
pairs, comparing runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curation import evaluate
from curation.scoring import metrics
from embeddings.embedders import make_embedder
from tests.conftest import REPO
from tests.test_predict import BROKEN, MISSING, independent_similarity, make_test_set

N = 400


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """A ground truth with types and a submission in its order; scores tied to 2 decimals."""
    rng = np.random.default_rng(0)
    types = rng.choice(["same", "different", "own_fake"], N, p=[0.5, 0.25, 0.25])
    labels = (types == "same").astype(int)
    scores = np.round(rng.normal(0, 0.2, N) + 0.5 * labels + 0.2 * (types == "own_fake"), 2)
    ids = [f"{i:08d}" for i in rng.permutation(10**6)[:N]]  # leading zeros must survive
    truth = pd.DataFrame({"pair_id": ids, "label": labels, "type": types})
    sub = pd.DataFrame({"pair_id": ids, "similarity": scores})
    paths = {"truth": tmp_path / "truth.csv", "sub": tmp_path / "sub.csv", "shuffled": tmp_path / "shuffled.csv"}
    truth.to_csv(paths["truth"], index=False)
    sub.to_csv(paths["sub"], index=False)
    sub.sample(frac=1, random_state=1).to_csv(paths["shuffled"], index=False)
    return paths


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = evaluate.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_scores_writes_metrics_equal_to_the_metrics_module(files, tmp_path, capsys):
    code, out, err = run(["--scores", files["sub"], "--truth", files["truth"], "--out", tmp_path / "ev"], capsys)
    assert code == 0, err
    assert "warning" not in err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    truth = pd.read_csv(files["truth"], dtype={"pair_id": str})
    sub = pd.read_csv(files["sub"], dtype={"pair_id": str})
    expected = metrics.verification_report(sub["similarity"], truth["label"], truth["type"])
    assert (m["eer"], m["eer_threshold"], m["eer_roc"]) == (expected.eer, expected.eer_threshold, expected.eer_roc)
    assert m["tar_at_far"] == {k: v.tar for k, v in expected.tar_at_far.items()}
    assert set(m["per_type"]) == {"same", "different", "own_fake"}
    assert (m["n_pos"], m["n_neg"]) == (expected.n_pos, expected.n_neg)
    assert m["source"]["order_matches_truth"] is True
    written = pd.read_csv(tmp_path / "ev" / "scores.csv", dtype={"pair_id": str})
    assert written["pair_id"].tolist() == truth["pair_id"].tolist()
    assert written.columns.tolist() == ["pair_id", "similarity", "label", "type"]
    for name in ("roc.html", "det.html", "scores.html"):
        assert (tmp_path / "ev" / name).stat().st_size > 1000
    assert "EER" in out and "kaleido" in out  # the summary, and the note on the skipped PNG


def test_out_must_be_absent_empty_or_an_earlier_evaluation(files, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text("my own numbers")
    code, _, err = run(["--scores", files["sub"], "--truth", files["truth"], "--out", mine], capsys)
    assert code == 2 and f"{mine} is not empty and holds no manifest.json, so this tool did not write it" in err
    assert [p.name for p in mine.iterdir()] == ["metrics.json"] and (mine / "metrics.json").read_text() == "my own numbers"
    ev = tmp_path / "ev"
    for _ in range(2):  # a rerun replaces the files it wrote
        assert run(["--scores", files["sub"], "--truth", files["truth"], "--out", ev], capsys)[0] == 0
    manifest = json.loads((ev / "manifest.json").read_text())
    on_disk = {p.name for p in ev.iterdir()} - {"manifest.json"}
    assert manifest["command"] == "curation.evaluate" and on_disk <= set(manifest["files"])
    assert {"metrics.json", "scores.csv", "roc.html", "plotly.min.js"} <= on_disk


def test_shuffled_submission_scores_the_same_and_warns(files, tmp_path, capsys):
    run(["--scores", files["sub"], "--truth", files["truth"], "--out", tmp_path / "a"], capsys)
    code, _, err = run(["--scores", files["shuffled"], "--truth", files["truth"], "--out", tmp_path / "b"], capsys)
    assert code == 0
    assert "not in the order of" in err and "by position" in err
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    for d in (a, b):
        d.pop("source"), d.pop("created")
    assert a == b
    # and the scores.csv is back in the truth's order
    assert (tmp_path / "a" / "scores.csv").read_text() == (tmp_path / "b" / "scores.csv").read_text()


def _broken(kind: str, files: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """(submission, truth) with one defect of the given kind."""
    sub = pd.read_csv(files["sub"], dtype=str)
    truth = pd.read_csv(files["truth"], dtype=str)
    bad = tmp_path / "bad.csv"
    if kind == "missing_id":
        sub.drop(index=[5, 9]).to_csv(bad, index=False)
    elif kind == "duplicated_id":
        pd.concat([sub, sub.iloc[[3]]]).to_csv(bad, index=False)
    elif kind == "extra_id":
        pd.concat([sub, pd.DataFrame({"pair_id": ["99999999"], "similarity": ["0.5"]})]).to_csv(bad, index=False)
    elif kind == "non_numeric":
        sub.loc[7, "similarity"] = "high"
        sub.to_csv(bad, index=False)
    elif kind == "nan_score":
        sub.loc[7, "similarity"] = "nan"
        sub.to_csv(bad, index=False)
    elif kind == "missing_column":
        sub.rename(columns={"similarity": "score"}).to_csv(bad, index=False)
    elif kind == "empty_file":
        bad.write_bytes(b"")
    elif kind == "header_only":
        bad.write_text("pair_id,similarity\n")
    elif kind == "no_such_file":
        bad = tmp_path / "nowhere.csv"
    elif kind == "leading_zeros_lost":
        sub.assign(pair_id=sub["pair_id"].str.lstrip("0")).to_csv(bad, index=False)
    elif kind in ("bad_label", "one_class"):
        truth.loc[4, "label"] = "2"
        if kind == "one_class":
            truth["label"] = "1"
        truth.to_csv(bad, index=False)
        return files["sub"], bad
    return bad, files["truth"]


@pytest.mark.parametrize(
    "kind,message",
    [
        ("missing_id", "lacks 2 pair_id"),
        ("duplicated_id", "more than once"),
        ("extra_id", "not in"),
        ("non_numeric", "non-numeric similarity"),
        ("nan_score", "empty or NaN similarity"),
        ("missing_column", "missing column(s) similarity"),
        ("empty_file", "empty file"),
        ("header_only", "no rows"),
        ("no_such_file", "no such file"),
        ("leading_zeros_lost", "leading zeros"),
        ("bad_label", "label must be 0 or 1"),
        ("one_class", "at least one positive"),
    ],
)
def test_broken_files_give_one_clear_line_and_exit_2(kind, message, files, tmp_path, capsys):
    sub, truth = _broken(kind, files, tmp_path)
    code, out, err = run(["--scores", sub, "--truth", truth, "--out", tmp_path / "ev"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    culprit = truth if kind in ("bad_label", "one_class") else sub
    assert lines[0].startswith(f"error: {culprit}")  # names the file
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_cli_process_exit_code_and_no_traceback(files, tmp_path):
    """The real entry point: a broken file exits 2 with one line; --help shows examples."""
    sub, truth = _broken("duplicated_id", files, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "curation.evaluate", "--scores", str(sub), "--truth", str(truth), "--out",
         str(tmp_path / "ev")], cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "more than once" in proc.stderr
    help_text = subprocess.run([sys.executable, "-m", "curation.evaluate", "--help"], cwd=REPO, capture_output=True,
                               text=True, timeout=120).stdout
    assert "examples:" in help_text and "--compare" in help_text and "--scores" in help_text
    assert "--pairs" in help_text and "fallback_pairs.csv" in help_text and "--model" in help_text
    assert "--exclude-fallback" in help_text


def test_compare_prints_one_table_of_evaluations_and_training_runs(files, tmp_path, capsys):
    run(["--scores", files["sub"], "--truth", files["truth"], "--out", tmp_path / "pretrained"], capsys)
    run(["--scores", files["shuffled"], "--truth", files["truth"], "--out", tmp_path / "finetuned",
         "--threshold", "0.3"], capsys)
    # a training run: records as training writes them, one per validation; the best (lowest eer) is compared
    run_dir = tmp_path / "run_cleaned"
    run_dir.mkdir()
    def record(step: int, scores: list[float]) -> dict:
        """A validation record the way curation.train_on_clean writes one (per_type as plain rates)."""
        r = metrics.verification_report(scores, [1, 0, 1, 0], ["same", "different", "same", "own_fake"], curve=False)
        return {"step": step, "lr": 5e-6, "train_loss": 0.5, "time": 10.0 * step, "eer": r.eer,
                "eer_threshold": r.eer_threshold, "eer_roc": r.eer_roc,
                "per_type": {k: v.rate for k, v in r.per_type.items()}, "tar_at_far": {"0.01": None}}

    records = [record(100, [0.9, 0.7, 0.6, 0.5]), record(200, [0.9, 0.2, 0.6, 0.1]), record(300, [0.9, 0.7, 0.6, 0.8])]
    (run_dir / "performance_history.json").write_text(json.dumps(records))
    code, out, err = run(["--compare", tmp_path / "pretrained", tmp_path / "finetuned", run_dir,
                          "--out", tmp_path / "cmp"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    header = lines[0]
    for col in ("eer", "eer_threshold", "eer_roc", "TAR@FAR=0.01", "same FRR", "own_fake FAR", "step"):
        assert col in header
    assert any(line.startswith("pretrained ") for line in lines)
    assert any(line.startswith("finetuned ") for line in lines)
    assert any(line.startswith("run_cleaned (step 200, best)") for line in lines)
    m = json.loads((tmp_path / "pretrained" / "metrics.json").read_text())
    assert f"{m['eer']:.4f}" in next(line for line in lines if line.startswith("pretrained "))
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv", index_col="run")
    assert table.loc["finetuned", "eer"] == pytest.approx(m["eer"])  # same scores, other order: same EER
    # the training run's plain per-type rates land in the same columns as the evaluations' rates
    assert "own_fake" not in table.columns and table.loc["run_cleaned (step 200, best)", "own_fake FAR"] == 0.0
    assert table.loc["run_cleaned (step 200, best)", "same FRR"] == 0.0
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith("| run |")
    assert (tmp_path / "cmp" / "roc.html").exists() and (tmp_path / "cmp" / "det.html").exists()
    code, out, _ = run(["--compare", run_dir, "--pick", "last"], capsys)
    assert code == 0 and "run_cleaned (step 300, last)" in out


def test_compare_refuses_a_folder_without_metrics(tmp_path, capsys):
    code, _, err = run(["--compare", tmp_path], capsys)
    assert code == 2 and "neither metrics.json nor performance_history.json" in err


# ------------------------------------------------------------------------------------- --pairs: a model on image pairs


@pytest.fixture()
def labelled_pairs(glint_dir, tmp_path) -> tuple[Path, pd.DataFrame, Path]:
    """(root, pairs, PAIRS.csv): the predict tests' glint24 test set labelled img1,img2,label,type; the truncated and
    the missing image sit in a same-person and a different-person pair."""
    root = tmp_path / "photos"
    pairs = make_test_set(glint_dir, root)
    pairs["label"] = pairs["kind"].isin(["same", BROKEN]).astype(int)
    pairs["type"] = np.where(pairs["label"] == 1, "same", "different")
    csv = tmp_path / "pairs.csv"
    pairs[["img1", "img2", "label", "type"]].to_csv(csv, index=False)
    return root, pairs, csv


def test_pairs_mode_scores_every_pair_and_excludes_only_when_asked(labelled_pairs, models_dir, tmp_path, capsys):
    root, pairs, csv = labelled_pairs
    model = f"onnx:{models_dir / 'mobilefacenet.onnx'}"
    base = ["--pairs", csv, "--root", root, "--model", model, "--aligned", "--device", "cpu", "--workers", "0",
            "--no-progress"]
    bad = pairs[pairs["kind"].isin([BROKEN, MISSING])]
    code, out, err = run([*base, "--out", tmp_path / "all"], capsys)
    assert code == 0, err
    every = pd.read_csv(tmp_path / "all" / "scores.csv")
    assert every[["img1", "img2"]].values.tolist() == pairs[["img1", "img2"]].values.tolist()  # all 18, in order
    assert (every.loc[bad.index, "similarity"] == -1.0).all()  # not embedded: scored -1, rejected
    m = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert (m["n_pos"], m["n_neg"]) == (9, 9) and m["source"]["n_excluded"] == 0
    assert (m["source"]["n_fallback"], m["source"]["n_unscored"], m["source"]["n_weak_alignment"]) == (2, 2, 0)
    listed = pd.read_csv(tmp_path / "all" / "fallback_pairs.csv")
    assert sorted(listed["image"]) == sorted(bad["img2"]) and listed["status"].str.startswith("unreadable").all()
    assert "2 of 18 pair(s) used a fallback" in out and "scored (not embedded: -1, rejected)" in out

    code, out, err = run([*base, "--out", tmp_path / "ev", "--exclude-fallback"], capsys)
    assert code == 0, err
    good = pairs[~pairs["kind"].isin([BROKEN, MISSING])].reset_index(drop=True)
    written = pd.read_csv(tmp_path / "ev" / "scores.csv")
    assert written.columns.tolist() == ["img1", "img2", "similarity", "label", "type"]
    assert written[["img1", "img2"]].values.tolist() == good[["img1", "img2"]].values.tolist()  # CSV order kept
    # the cached embeddings are float16: cosines agree to ~1e-3
    reference = independent_similarity(make_embedder(model, device="cpu"), root, good, flip=True)  # the default
    np.testing.assert_allclose(written["similarity"], reference, atol=2e-3)
    assert "-flip@" in out
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    expected = metrics.verification_report(written["similarity"], good["label"], good["type"])
    assert (m["eer"], m["eer_threshold"], m["eer_roc"]) == (expected.eer, expected.eer_threshold, expected.eer_roc)
    assert (m["n_pos"], m["n_neg"]) == (8, 8) and set(m["per_type"]) == {"same", "different"}
    assert m["source"]["mode"] == "pairs" and m["source"]["n_pairs"] == 18 and m["source"]["n_excluded"] == 2
    assert "excluded" in m["source"]["fallback_policy"]
    excluded = pd.read_csv(tmp_path / "ev" / "fallback_pairs.csv")
    assert excluded.columns.tolist() == ["img1", "img2", "label", "type", "image", "status"]
    assert sorted(excluded["image"]) == sorted(bad["img2"]) and excluded["status"].str.startswith("unreadable").all()
    assert "2 of 18 pair(s) used a fallback" in out and "excluded from the metrics" in out and "EER" in out
    assert (tmp_path / "ev" / "cache").is_dir()  # the default cache: inside --out


def test_pairs_mode_refuses_paths_outside_the_root_naming_the_line(labelled_pairs, tmp_path):
    """Through the real entry point: the error comes from curation.predict's reader and must still be one line."""
    root, pairs, csv = labelled_pairs
    table = pd.read_csv(csv)
    table.loc[2, "img1"] = "../../etc/passwd"
    table.to_csv(csv, index=False)
    proc = subprocess.run([sys.executable, "-m", "curation.evaluate", "--pairs", str(csv), "--root", str(root),
                           "--out", str(tmp_path / "ev")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == f"error: {csv}: line 4: img1 '../../etc/passwd' points outside {root.resolve()}"
    assert not (tmp_path / "ev").exists()


def test_pairs_mode_needs_out_and_labels(labelled_pairs, tmp_path, capsys):
    root, pairs, csv = labelled_pairs
    code, _, err = run(["--pairs", csv, "--root", root], capsys)
    assert code == 2 and "--pairs needs --out DIR" in err
    pairs.drop(columns=["label"]).to_csv(csv, index=False)
    code, _, err = run(["--pairs", csv, "--root", root, "--out", tmp_path / "ev"], capsys)
    assert code == 2 and "missing column(s) label" in err
