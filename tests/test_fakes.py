"""Synthetic deepfakes (curation.fakes) on real LFW photos: they are faces, they look like the impersonated identity, and
the output is a complete dataset whose meta.json marks them fake."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from curation.fakes import main as fakes_main
from curation.training.fakes import make_fakes
from embeddings.align import align
from embeddings.detectors import make_detector
from embeddings.embedders import make_embedder
from labels.imagefile import read_rgb
from labels.layouts import read_layout
from tests.conftest import copy_identities

PEOPLE = ["Al_Gore", "Amelie_Mauresmo", "Elton_John", "Jennifer_Garner", "Pervez_Musharraf", "Saddam_Hussein"]


@pytest.fixture(scope="module")
def fake_set(lfw_dir, tmp_path_factory):
    data = copy_identities(lfw_dir, tmp_path_factory.mktemp("data"), PEOPLE, per_identity=6)
    out = tmp_path_factory.mktemp("out") / "with_fakes"
    summary = make_fakes(data, out, per_identity=2, seed=3, progress=False)
    return data, out, summary


def test_output_is_a_full_dataset_with_the_fakes_marked(fake_set):
    data, out, summary = fake_set
    assert summary.fakes_made == {"swap": 6, "morph": 6} and summary.identities_without_fakes == 0
    layout = read_layout(out)  # read back exactly as ingest would
    assert layout.kind == "challenge" and not layout.refused
    fakes = {e.path for e in layout.entries if e.is_fake}
    reals = {e.path for e in layout.entries if not e.is_fake}
    assert reals == {f"{p.parent.name}/{p.name}" for p in data.glob("*/*.jpg")}
    assert fakes == {f"{n}/fake_{k}_{i:02d}.jpg" for n in PEOPLE for i, k in enumerate(["swap", "morph"])}
    with open(out / "fakes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["path"] for r in rows} == fakes
    for r in rows:  # a fake of A comes from A's real photo and someone else's
        assert r["source"].split("/")[0] == r["identity"] != r["target"].split("/")[0]
    assert json.loads((out / "meta.json").read_text()) == {e.path: int(e.is_fake) for e in layout.entries}


def test_fakes_are_faces_that_look_like_the_impersonated_identity(fake_set):
    """dlib finds a face in every fake, and dlib's embedding puts it nearer its identity's real photos than others'."""
    _, out, _ = fake_set
    detector, embedder = make_detector("dlib"), make_embedder("dlib")
    layout = read_layout(out)
    crops, who, fake = [], [], []
    for e in layout.entries:
        result = align(read_rgb(layout.root / e.path), detector, geometry=embedder.geometry)
        assert result.crop is not None or not e.is_fake, f"no face found in the fake {e.path}: {result.problem}"
        if result.crop is not None:
            crops.append(result.crop)
            who.append(e.identity)
            fake.append(e.is_fake)
    unit, _ = embedder.embed(np.stack(crops))
    who, fake = np.array(who), np.array(fake)
    sims = unit @ unit.T
    own, others = [], []
    for i in np.flatnonzero(fake):
        own.append(sims[i, ~fake & (who == who[i])].mean())
        others.append(sims[i, ~fake & (who != who[i])].mean())
        assert own[-1] > others[-1], f"a fake of {who[i]} is nearer other people ({others[-1]:.3f}) than {who[i]}"
    assert np.mean(own) > np.mean(others) + 0.05


def test_rerun_resumes_and_other_settings_are_refused(fake_set, capsys):
    data, out, _ = fake_set
    before = {p: p.stat().st_mtime_ns for p in out.glob("images/*/fake_*.jpg")}
    again = make_fakes(data, out, per_identity=2, seed=3, progress=False)
    assert again.identities_skipped == len(PEOPLE) and sum(again.fakes_made.values()) == 0
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("images/*/fake_*.jpg")}
    assert fakes_main([str(data), "--out", str(out), "--per-identity", "3"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert fakes_main([str(data), "--out", str(data / "inside")]) == 2
    assert fakes_main([str(data), "--out", str(out), "--kinds", "gan"]) == 2


def test_out_is_refused_unless_it_is_an_earlier_fakes_output(fake_set, tmp_path, capsys):
    data, out, _ = fake_set
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert manifest["command"] == "curation.fakes" and on_disk == set(manifest["files"]) | {"manifest.json"}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "meta.json").write_text('{"my": "notes"}')  # a user's folder that happens to hold a meta.json
    assert fakes_main([str(data), "--out", str(mine)]) == 2
    assert "holds no manifest.json, so this tool did not write it" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["meta.json"] and "notes" in (mine / "meta.json").read_text()
