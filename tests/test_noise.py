"""Planted noise (curation.flagging.noise): the plan, the files it makes, and the scoring arithmetic."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from curation.flagging.noise import list_identities, main, plan_noise, plant, score, synthetic_embeddings


def _ids(n=10, k=10):
    return {f"p{i:02d}": [f"{j}.jpg" for j in range(k)] for i in range(n)}


def test_plan_noise_moves_about_the_fraction_and_keeps_every_photo():
    ids = _ids(20, 10)
    plan = plan_noise(ids, fraction=0.1, seed=3)
    kinds = [k for _, _, k in plan.photos.values()]
    assert kinds.count("moved") == 20
    sources = [s for s, _, k in plan.photos.values() if k != "duplicate"]
    assert sorted(sources) == sorted(f"{n}/{f}" for n, fs in ids.items() for f in fs)  # each photo exactly once
    for dest, (src, person, kind) in plan.photos.items():
        folder = dest.split("/")[0]
        if kind in ("moved", "duplicate"):
            assert plan.folder_person[folder] != person
        if kind == "kept":
            assert plan.folder_person[folder] == person
    a, b = plan.merged["people"]
    assert plan.merged["folder"] == a and b not in plan.folder_person
    c = plan.split["person"]
    assert [plan.folder_person[f] for f in plan.split["folders"]] == [c, c]
    assert {like for _, _, like in plan.fakes.values()} == {True, False}
    with pytest.raises(ValueError):
        plan_noise(_ids(5))


def test_plant_writes_files_meta_and_truth(lfw_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    names = sorted(list_identities(lfw_dir, 10))[:7]
    for n in names:
        (src / n).symlink_to(lfw_dir / n)
    truth = plant(src, tmp_path / "noisy", max_photos=12, seed=1)
    meta = json.loads((tmp_path / "noisy" / "meta.json").read_text())
    assert set(meta) == set(truth["photos"]) | set(truth["fakes"])
    assert all((tmp_path / "noisy" / k).is_file() for k in meta)
    assert sum(meta.values()) == len(truth["fakes"]) > 0
    assert (tmp_path / "noisy" / "truth.json").is_file()
    with pytest.raises(ValueError, match="not empty"):
        plant(src, tmp_path / "noisy")


def test_score_counts_against_the_truth():
    truth = {
        "folder_person": {"A": "A", "B": "B", "C": "C", "C__2": "C"},
        "photos": {
            "A/1.jpg": {"person": "A", "kind": "kept"},
            "A/2.jpg": {"person": "B", "kind": "moved"},
            "A/3.jpg": {"person": "C", "kind": "moved"},
            "B/1.jpg": {"person": "B", "kind": "kept"},
            "B/2.jpg": {"person": "D", "kind": "merged_in"},
            "C/1.jpg": {"person": "C", "kind": "kept"},
        },
        "fakes": {"A/f1.jpg": {"person": "A", "looks_like_folder": True},
                  "B/f2.jpg": {"person": "C", "looks_like_folder": False}},
        "merged": {"folder": "B", "people": ["B", "D"]},
        "split": {"person": "C", "folders": ["C", "C__2"]},
    }
    flags = pd.DataFrame(
        [
            ("data/A/2.jpg", "A", "outlier", "B"),  # moved, right suggestion
            ("data/A/3.jpg", "A", "minority", "C__2"),  # moved, right person under the split folder
            ("data/A/1.jpg", "A", "outlier", "B"),  # false positive
            ("data/B/2.jpg", "B", "minority", "A"),  # merged-in person: a correct flag
            ("", "B", "split", None),
            ("", "C__2", "merge", "C"),
            ("data/B/f2.jpg", "B", "fake_mismatch", None),
        ],
        columns=["image", "identity", "flag", "suggested_identity"],
    )
    s = score(flags, truth)
    assert s["precision"] == 0.75 and s["recall_moved"] == 1.0 and s["suggested_top1_moved"] == 1.0
    assert s["split_caught"] and s["merge_caught"]
    assert s["fake_mismatch_precision"] == 1.0 and s["fake_mismatch_recall"] == 1.0


def test_synthetic_embeddings_shape_and_noise():
    emb, given, truth = synthetic_embeddings(100, 10, 32, moved=0.1, seed=0)
    assert emb.dtype == np.float16 and emb.shape == (len(given), 32)
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1, atol=2e-3)
    assert np.mean(given != truth) == pytest.approx(0.1, abs=0.01)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["score", str(tmp_path), str(tmp_path / "truth.json")]) == 2
    assert "flags.csv" in capsys.readouterr().err


def test_flag_truth_says_which_flags_a_reviewer_who_knew_would_confirm():
    from curation.flagging.noise import flag_truth

    ids = _ids(20, 10)
    plan = plan_noise(ids, fraction=0.1, seed=3)
    truth = plan.truth("src", 3)
    moved = next(d for d, (_, _, k) in plan.photos.items() if k == "moved")
    kept = next(d for d, (_, _, k) in plan.photos.items() if k == "kept")
    dup = next(d for d, (_, _, k) in plan.photos.items() if k == "duplicate")
    original = next(d for d, (s, _, k) in plan.photos.items() if k == "kept" and s == plan.photos[dup][0])
    mismatch = next(d for d, (_, _, like) in plan.fakes.items() if not like)
    mirror = next(d for d, (_, _, like) in plan.fakes.items() if like)
    a, b = plan.split["folders"]
    rows = [
        ("outlier", f"data/{moved}", None, None, "{}", True),  # the path as ingested may have a prefix
        ("minority", kept, None, None, "{}", False),
        ("duplicate", dup, None, None, json.dumps({"duplicate_of": original}), True),
        ("duplicate", kept, None, None, json.dumps({"duplicate_of": original}), kept == original),
        ("fake_mismatch", mismatch, None, None, "{}", True),
        ("fake_mismatch", mirror, None, None, "{}", False),
        ("merge", None, a, b, "{}", True),
        ("merge", None, a, plan.merged["folder"], "{}", False),
        ("split", None, plan.merged["folder"], None, "{}", True),
        ("split", None, a, None, "{}", False),
        ("no_face", kept, None, None, "{}", False),
        ("outlier", "nowhere/x.jpg", None, None, "{}", False),
    ]
    flags = pd.DataFrame([r[:5] for r in rows], columns=["kind", "image", "identity", "suggested_identity", "details"])
    assert flag_truth(flags, truth).tolist() == [r[5] for r in rows]
