"""Export end to end: the three formats, the manifest, --unreviewed keep|apply, output safety, re-ingesting an export.

One curated work folder (real photos, decisions by two reviewers, flags from ingest and from a pretend clean stage) is
shared by the read-only tests; the expected cleaned labels are written out here from the decisions made, not taken
from labels.export.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from labels.export import ExportError, effective_labels, export, main
from labels.ingest import ingest
from labels.store import FoundImage, LabelStore, NewFlag
from tests.conftest import REPO
from tests.dataset_files import ACCENTED, build_photos, sha256


@pytest.fixture(scope="module")
def curated(tmp_path_factory, lfw_dir, glint_dir) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("export")
    data, work = root / "data", root / "work"
    found = build_photos(lfw_dir, glint_dir, data)
    of = {name: sorted(p for p in found if found[p] == name) for name in set(found.values())}
    gore, colin, tom, will, jose = (of[n] for n in ("Al_Gore", "Colin_Powell", "Tom Hanks", "Will Smith", ACCENTED))
    clash = f"Colin_Powell/{Path(gore[1]).name}"  # a Colin photo named like the Gore photo that will be moved in
    Image.open(data / colin[0]).save(data / clash, quality=80)
    shutil.copy2(data / tom[0], data / "Will Smith" / "zz dup.png")  # an exact copy across identities
    (data / "Al_Gore" / "broken.jpg").write_text("not a photo")
    (data / "meta.json").write_text(json.dumps({will[1]: 1, will[2]: 1}))
    ingest(data, work, progress=False)
    with LabelStore.open(work) as store:
        ids = store.image_ids([*found, clash, "Will Smith/zz dup.png"])
        d = {
            "remove": store.decide("remove", reviewer="ana", image_ids=[ids[gore[2]]]),
            "move": store.decide("move", reviewer="ana", image_ids=[ids[gore[1]]], target_identity="Colin_Powell"),
            "fake": store.decide("mark_fake", reviewer="ana", image_ids=[ids[tom[1]]]),
            "real": store.decide("mark_real", reviewer="bo", image_ids=[ids[will[1]]]),
        }
        store.undo(store.decide("remove", reviewer="bo", image_ids=[ids[jose[0]]]), reviewer="bo")
        store.replace_flags(
            "clean",
            [
                NewFlag("outlier", "Colin_Powell", colin[2]),
                NewFlag("fake_mismatch", "Will Smith", will[2]),
                NewFlag("merge", ACCENTED, None, suggested_identity="Al_Gore", score=0.8),
                NewFlag("split", "Tom Hanks", None, score=0.5),
            ],
        )
        flags = store.flags()
    flag = {k: int(i) for k, i in zip(flags.kind, flags.id)}
    fakes = {will[1], will[2]}
    everything = {**found, clash: "Colin_Powell", "Will Smith/zz dup.png": "Will Smith"}
    keep = {p: (i, p in fakes) for p, i in everything.items()}
    del keep[gore[2]]
    keep[gore[1]] = ("Colin_Powell", False)
    keep[tom[1]] = ("Tom Hanks", True)
    keep[will[1]] = ("Will Smith", False)
    apply = {p: v for p, v in keep.items() if p not in (colin[2], will[2], "Will Smith/zz dup.png")}
    left = Counter(i for i, _ in apply.values())
    assert left["Al_Gore"] < left[ACCENTED]  # so the merge flag folds Al_Gore into José, not the other way
    apply.update({p: (ACCENTED, f) for p, (i, f) in apply.items() if i == "Al_Gore"})
    changes = {  # what the manifest must say for --unreviewed keep: path -> (change, by)
        gore[2]: ({"removed": True}, [f"decision #{d['remove']}"]),
        gore[1]: ({"moved": {"from": "Al_Gore", "to": "Colin_Powell"}}, [f"decision #{d['move']}"]),
        tom[1]: ({"marked": "fake"}, [f"decision #{d['fake']}"]),
        will[1]: ({"marked": "real"}, [f"decision #{d['real']}"]),
    }
    return SimpleNamespace(
        data=data, work=work, root=root, keep=keep, apply=apply, changes=changes, flag=flag, ids=ids,
        clash=clash, moved=gore[1], gore=gore, colin=colin, will=will,
    )


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _reingested(out: Path, work: Path, **kwargs) -> Counter:
    """(sha256, identity, is_fake) of every photo a fresh ingest of an export finds."""
    ingest(None if kwargs else out, work, progress=False, **kwargs)
    with LabelStore.open(work) as store:
        df = store.images()
    return Counter(zip(df.sha256, df.identity_found, df.fake_found.astype(bool)))


def _expected(c, labels: dict) -> Counter:
    return Counter((sha256(c.data / p), i, f) for p, (i, f) in labels.items())


def test_folders_export_links_photos_and_lists_every_change(curated, tmp_path):
    c = curated
    out = tmp_path / "clean"
    summary = export(c.work, out, progress=False)

    names = {p: f"{i}/{Path(p).name}" for p, (i, _) in c.keep.items()}
    names[c.moved] = f"Colin_Powell/{Path(c.moved).stem}~1.jpg"  # the photo already there keeps its name
    assert _listing(out) == set(names.values()) | {"meta.json", "manifest.json"}
    for src, dst in names.items():
        assert os.path.samefile(out / dst, c.data / src), dst  # a hard link: no copy of the bytes
    assert json.loads((out / "meta.json").read_text()) == {names[p]: int(f) for p, (_, f) in c.keep.items()}

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["dataset_root"] == str(c.data.resolve())
    assert manifest["options"] == {"format": "folders", "unreviewed": "keep"}
    what = ("removed", "moved", "marked")
    got = {ch["path"]: ({k: v for k, v in ch.items() if k in what}, ch["by"]) for ch in manifest["changes"]}
    assert got == c.changes
    assert {ch["path"]: ch.get("exported_as") for ch in manifest["changes"]} == {p: names.get(p) for p in c.changes}
    assert manifest["left_out"] == [{"path": "Al_Gore/broken.jpg", "reason": "unreadable: not an image"}]
    counts = manifest["counts"]
    assert (counts["exported"], counts["removed"], counts["moved"], counts["marked_fake"], counts["marked_real"]) == (
        len(c.keep), 1, 1, 1, 1,
    )
    assert (counts["deepfakes"], counts["unreadable"], counts["flags_applied"]) == (2, 1, 0)
    assert counts["open_flags_left"] == 6  # 4 from the clean stage + 'unreadable' and 'duplicate' from ingest
    assert summary.n_images == len(c.keep) and summary.files == {"hardlink": len(c.keep)}

    with LabelStore.open(c.work) as store:  # training reads exactly what was exported
        labels = effective_labels(store)
    kept = labels[~labels.removed]
    assert dict(zip(kept.path, zip(kept.identity, kept.is_fake))) == c.keep
    assert labels.set_by[labels.path == c.moved].item() == f"decision #{c.changes[c.moved][1][0].split('#')[1]}"

    again = tmp_path / "again"
    export(c.work, again, progress=False)  # deterministic: same names, same meta.json
    assert _listing(again) == _listing(out)
    assert (again / "meta.json").read_text() == (out / "meta.json").read_text()
    assert _reingested(out, tmp_path / "work2") == _expected(c, c.keep)  # identity folders + meta.json re-ingest as is


def test_meta_export_writes_the_challenge_layout(curated, tmp_path):
    c = curated
    out = tmp_path / "challenge"
    export(c.work, out, fmt="meta", progress=False)

    files = _listing(out) - {"meta.json", "manifest.json"}
    per_identity = Counter(f.split("/")[1] for f in files)
    assert per_identity == Counter(i for i, _ in c.keep.values())
    for f in files:
        assert f.startswith("images/") and f.count("/") == 2
    for identity, n in per_identity.items():  # numbered 0..n-1, extension kept
        assert sorted(int(Path(f).stem) for f in files if f.split("/")[1] == identity) == list(range(n))
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta) == {f.removeprefix("images/") for f in files}  # keys relative to images/, like the challenge's
    manifest = json.loads((out / "manifest.json").read_text())
    moved_to = next(ch["exported_as"] for ch in manifest["changes"] if ch["path"] == c.moved)
    assert moved_to == f"images/Colin_Powell/{per_identity['Colin_Powell'] - 1}.jpg"  # moved-in photos come last
    assert _reingested(out, tmp_path / "work2") == _expected(c, c.keep)
    with LabelStore.open(tmp_path / "work2") as store:
        assert store.get_meta("layout") == "challenge"


def test_csv_export_lists_the_original_paths(curated, tmp_path):
    c = curated
    out = tmp_path / "csv"
    export(c.work, out, fmt="csv", progress=False)
    assert _listing(out) == {"labels.csv", "manifest.json"}
    lines = (out / "labels.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "path,identity,is_fake" and len(lines) == len(c.keep) + 1
    ingest(None, tmp_path / "work2", csv=out / "labels.csv", root=c.data, progress=False)
    with LabelStore.open(tmp_path / "work2") as store:
        df = store.images()
    assert dict(zip(df.path, zip(df.identity_found, df.fake_found.astype(bool)))) == c.keep


def test_unreviewed_apply_acts_on_open_flags_in_memory_only(curated, tmp_path):
    c = curated
    with LabelStore.open(c.work) as store:
        history, flags = store.history(limit=100), store.flags()
    out = tmp_path / "auto"
    summary = export(c.work, out, fmt="csv", unreviewed="apply", progress=False)

    with LabelStore.open(c.work) as store:
        assert store.history(limit=100) == history  # nobody's name on decisions they never made
        assert store.flags().equals(flags)
        labels = effective_labels(store, "apply")
    kept = labels[~labels.removed]
    assert dict(zip(kept.path, zip(kept.identity, kept.is_fake))) == c.apply
    manifest = json.loads((out / "manifest.json").read_text())
    by = {ch["path"]: ch["by"] for ch in manifest["changes"]}
    assert by[c.colin[2]] == [f"auto: flag #{c.flag['outlier']}"]
    assert by[c.will[2]] == [f"auto: flag #{c.flag['fake_mismatch']}"]
    assert by["Will Smith/zz dup.png"] == [f"auto: flag #{c.flag['duplicate']}"]
    assert by[c.gore[0]] == [f"auto: flag #{c.flag['merge']}"]
    assert manifest["counts"]["flags_applied"] == summary.n_auto == 4
    assert summary.n_open_left == 2  # the split needs a person; the unreadable photo is left out anyway
    export(c.work, tmp_path / "kept", fmt="csv", progress=False)  # and 'keep' still exports the flagged photos
    assert len((tmp_path / "kept" / "labels.csv").read_text().splitlines()) == len(c.keep) + 1


def _synthetic(tmp_path, sizes: dict[str, int]) -> LabelStore:
    store = LabelStore.open(tmp_path)
    store.set_meta(dataset_root=str(tmp_path))
    store.add_images(
        FoundImage(f"{i}/{k}.jpg", 1, 1, i, sha256=f"{i}{k}", width=1, height=1)
        for i, n in sizes.items()
        for k in range(n)
    )
    return store


def test_apply_keeps_one_copy_of_a_duplicate_whose_original_was_removed(tmp_path):
    store = _synthetic(tmp_path, {"A": 2, "B": 2})
    copies = (("A", "A/1.jpg"), ("B", "B/0.jpg"))
    store.replace_flags("ingest", [NewFlag("duplicate", i, p, details={"duplicate_of": "A/0.jpg"}) for i, p in copies])
    labels = effective_labels(store, "apply")
    assert sorted(labels.path[~labels.removed]) == ["A/0.jpg", "B/1.jpg"]  # the original stays, both copies go
    store.decide("remove", reviewer="ana", image_ids=[store.image_ids(["A/0.jpg"])["A/0.jpg"]])
    labels = effective_labels(store, "apply")
    assert sorted(labels.path[~labels.removed]) == ["A/1.jpg", "B/1.jpg"]  # one copy of the photo survives
    store.close()


def test_apply_merges_chains_into_the_largest_identity(tmp_path):
    store = _synthetic(tmp_path, {"A": 2, "B": 5, "C": 3, "D": 1})
    store.replace_flags(
        "clean",
        [
            NewFlag("merge", "A", None, suggested_identity="C"),  # A (2) into C (3)
            NewFlag("merge", "B", None, suggested_identity="A"),  # A is in C now (5), B has 5: ties follow the flag
            NewFlag("merge", "D", None, suggested_identity="C"),  # D (1) joins the 10
            NewFlag("split", "C", None),
        ],
    )
    labels = effective_labels(store, "apply")
    assert Counter(labels.identity) == {"C": 11}
    set_by = {p: s for p, s in zip(labels.path, labels.set_by)}
    assert [set_by[f"{i}/0.jpg"] for i in "ABCD"] == ["auto: flag #1", "auto: flag #2", "", "auto: flag #3"]
    store.close()


def test_overwrite_replaces_only_an_export_this_tool_wrote(curated, tmp_path):
    c = curated
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("four years of work")
    (out / "manifest.json").write_text("{}")  # a stray manifest of someone else's
    with pytest.raises(ExportError, match=r"manifest.json is not a manifest this tool wrote \(no \"tool\""):
        export(c.work, out, overwrite=True, progress=False)
    assert _listing(out) == {"thesis.tex", "manifest.json"} and (out / "thesis.tex").read_text() == "four years of work"
    (out / "manifest.json").unlink()
    for overwrite in (False, True):
        with pytest.raises(ExportError, match=f"{out} is not empty and holds no manifest.json.*it holds thesis.tex"):
            export(c.work, out, overwrite=overwrite, progress=False)
    assert _listing(out) == {"thesis.tex"}

    prev = tmp_path / "prev"
    export(c.work, prev, fmt="csv", progress=False)
    manifest = json.loads((prev / "manifest.json").read_text())
    assert (manifest["tool"], manifest["command"], manifest["files"]) == ("facecur", "labels.export", ["labels.csv"])
    with pytest.raises(ExportError, match="holds an earlier output of labels.export: pass --overwrite"):
        export(c.work, prev, progress=False)
    before = set(os.listdir(tmp_path))
    export(c.work, prev, fmt="folders", overwrite=True, progress=False)
    assert set(os.listdir(tmp_path)) == before  # nothing beside --out: no leftover temporary folders
    manifest = json.loads((prev / "manifest.json").read_text())
    assert _listing(prev) == set(manifest["files"]) | {"manifest.json"}  # every file written is listed
    assert "labels.csv" not in _listing(prev) and "meta.json" in manifest["files"]

    (prev / "Al_Gore" / "notes.txt").write_text("mine")  # a user's file inside an earlier export
    with pytest.raises(ExportError, match=r"holds files this tool did not write \(Al_Gore/notes.txt\)"):
        export(c.work, prev, fmt="csv", overwrite=True, progress=False)
    assert _listing(prev) == set(manifest["files"]) | {"manifest.json", "Al_Gore/notes.txt"}
    (prev / "Al_Gore" / "notes.txt").unlink()

    (tmp_path / "precious.txt").write_text("outside")
    hostile = {**manifest, "files": [*manifest["files"], "../precious.txt"]}
    (prev / "manifest.json").write_text(json.dumps(hostile))  # a hand-made manifest cannot make --overwrite leave OUT
    with pytest.raises(ExportError, match="it lists '../precious.txt', outside the folder"):
        export(c.work, prev, fmt="csv", overwrite=True, progress=False)
    assert (tmp_path / "precious.txt").read_text() == "outside"
    (prev / "manifest.json").write_text(json.dumps({**manifest, "command": "curation.evaluate"}))
    with pytest.raises(ExportError, match="holds the output of `python -m curation.evaluate`, not of labels.export"):
        export(c.work, prev, fmt="csv", overwrite=True, progress=False)

    for bad, message in [
        (c.data / "clean", "inside the source dataset"),
        (c.data.parent, "would replace the source dataset"),
        (c.work, "would replace the work folder"),
    ]:
        with pytest.raises(ExportError, match=message):
            export(c.work, bad, overwrite=True, progress=False)
    assert not (c.data / "clean").exists()


def test_identity_names_that_cannot_be_folders_are_refused(curated, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy2(curated.work / "labels.sqlite", work / "labels.sqlite")
    with LabelStore.open(work) as store:
        store.decide("move", reviewer="ana", image_ids=[curated.ids[curated.gore[0]]], target_identity=".hidden")
    with pytest.raises(ExportError, match="'.hidden' is not a usable identity name"):
        export(work, tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["work"]  # nothing written, not even a temporary folder


def test_export_refuses_photos_changed_since_ingest(tmp_path, lfw_dir, glint_dir):
    data = tmp_path / "data"
    found = build_photos(lfw_dir, glint_dir, data, per_identity=1)
    ingest(data, tmp_path / "work", progress=False)
    victim = data / sorted(found)[0]
    Image.open(victim).save(victim, quality=50)
    with pytest.raises(ExportError, match=f"{sorted(found)[0]} \\(modified\\).*run ingest again"):
        export(tmp_path / "work", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    ingest(data, tmp_path / "work", progress=False)
    assert export(tmp_path / "work", tmp_path / "out", progress=False).n_images == len(found)


def test_cli_help_errors_and_summary(curated, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "examples:" in capsys.readouterr().out
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds no labels.sqlite" in err and not (tmp_path / "nothing").exists()
    run = subprocess.run(
        [sys.executable, "-m", "labels.export", str(curated.work), "--out", str(tmp_path / "o"), "--format", "meta"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"exported {len(curated.keep)} photos" in run.stdout and "manifest.json" in run.stdout
