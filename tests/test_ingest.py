"""Ingest end to end on real photos (../shared/faces) plus deliberately broken files, in all three layouts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import labels.ingest as ingest_module
from labels.imagefile import read_rgb
from labels.ingest import IngestError, ingest, main
from labels.layouts import LayoutError, read_layout
from labels.store import LabelStore
from tests.conftest import REPO
from tests.dataset_files import ACCENTED, GLINT, build_odd_files, build_photos, sha256


@pytest.fixture
def data(tmp_path, lfw_dir, glint_dir) -> Path:
    """DATA/<identity>/ with real photos from LFW and glint24 (spaces) and a non-ASCII identity."""
    build_photos(lfw_dir, glint_dir, tmp_path / "data")
    return tmp_path / "data"


def _store_rows(work: Path) -> dict[str, dict]:
    with LabelStore.open(work) as store:
        df = store.images(present_only=False)
    df = df.astype(object).where(df.notna(), None)  # SQL NULL as None, not NaN
    return {r["path"]: r for r in df.to_dict("records")}


def test_identity_folders_with_odd_and_broken_files(tmp_path, data, lfw_dir):
    odd = build_odd_files(sorted((lfw_dir / "Tony_Blair").iterdir())[0], data / "Odd files")
    (data / ".DS_Store").write_bytes(b"\0")
    (data / "Tom Hanks" / "._10000.png").write_bytes(b"\0")  # macOS resource fork: hidden
    (data / "Tom Hanks" / "notes.txt").write_text("not a photo")
    (data / "README.md").write_text("dataset notes at the top level are ignored")
    work = tmp_path / "work"

    summary = ingest(data, work, workers=3, progress=False)

    on_disk = {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()}
    photos = {p for p in on_disk if not Path(p).name.startswith(".") and p.rsplit(".", 1)[-1] in ("jpg", "png")}
    rows = _store_rows(work)
    assert set(rows) == photos
    assert summary.n_files == summary.n_new == len(photos) and summary.layout == "folders"
    for path, row in rows.items():  # every file hashed, and sized as Pillow reads its header
        assert row["sha256"] == sha256(data / path)
        if not path.startswith("Odd files/"):
            assert row["problem"] is None and (row["width"], row["height"]) == Image.open(data / path).size
    for name, (kind, expected) in odd.items():
        row = rows[f"Odd files/{name}"]
        if kind == "ok":  # converted when read, not refused; EXIF rotation swaps width and height
            assert (row["problem"], (row["width"], row["height"])) == (None, expected), name
        else:
            assert (row["problem"], row["width"]) == (expected, None), name
    bad = {f"Odd files/{n}": why for n, (k, why) in odd.items() if k == "bad"}
    assert summary.unreadable == {why: [p] for p, why in bad.items()}  # one reason each here
    with LabelStore.open(work) as store:
        flags = store.flags()
        assert store.get_meta("dataset_root") == str(data.resolve())
    unreadable = flags[flags.kind == "unreadable"]
    assert dict(zip(unreadable.image, unreadable.details.map(lambda d: json.loads(d)["reason"]))) == bad
    assert set(flags.kind) == {"unreadable"} and set(flags.status) == {"open"}
    assert rows[f"{ACCENTED}/фото 1.jpg"]["identity_found"] == ACCENTED
    assert {r["identity_found"] for r in rows.values()} == {"Al_Gore", "Colin_Powell", *GLINT, ACCENTED, "Odd files"}
    assert summary.hidden == 2 and [(x.entry, x.kind) for x in summary.skipped] == [("Tom Hanks/notes.txt", "not_a_photo")]
    text = summary.report()
    for reason in bad.values():  # one summary line per reason
        assert sum(f"1 x {reason} (e.g. " in line for line in text.splitlines()) == 1
    assert "6 identities, photos per identity: min 3," in text


def test_nothing_is_left_out_quietly(tmp_path, data):
    """Unreadable formats, non-photos, empty identity folders and identities without a usable photo are named in the
    summary (first few and a count) and all listed in WORK/ingest_problems.csv; the formats Pillow reads are read."""
    photo = sorted((data / "Al_Gore").iterdir())[0]
    src = Image.open(photo).convert("RGB")
    src.save(data / "Al_Gore" / "as bitmap.BMP")
    src.save(data / "Al_Gore" / "as tiff.tif")
    src.save(data / "Al_Gore" / "as webp.webp", lossless=True)
    second = Image.open(sorted((data / "Colin_Powell").iterdir())[0]).convert("RGB").resize(src.size)
    src.save(data / "Al_Gore" / "animated.gif", save_all=True, append_images=[second], duration=100)
    (data / "Al_Gore" / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))  # an iPhone photo's header
    (data / "Al_Gore" / "notes.txt").write_text("not a photo")
    for k in range(4):
        (data / "Phone only" / f"IMG_{k:04d}.heic").parent.mkdir(exist_ok=True)
        (data / "Phone only" / f"IMG_{k:04d}.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (data / "Empty").mkdir()
    (data / "Nothing readable").mkdir()
    (data / "Nothing readable" / "a.jpg").write_bytes(b"")
    (data / "Nothing readable" / "b.png").write_text("not a png")
    shutil.copy2(photo, data / "loose.jpg")  # not inside an identity folder
    work = tmp_path / "work"
    summary = ingest(data, work, progress=False)

    expected = {  # entry -> kind, from what was put on disk above
        "Al_Gore/IMG_0001.HEIC": "unsupported_format", "Al_Gore/notes.txt": "not_a_photo", "loose.jpg":
        "outside_identity_folder", "Empty/": "empty_identity_folder", "Phone only/": "empty_identity_folder",
        "Nothing readable/": "no_usable_photo", "Nothing readable/a.jpg": "unreadable",
        "Nothing readable/b.png": "unreadable", **{f"Phone only/IMG_{k:04d}.heic": "unsupported_format" for k in range(4)},
    }
    listed = pd.read_csv(work / "ingest_problems.csv", dtype=str, keep_default_na=False)
    assert listed.columns.tolist() == ["entry", "kind", "reason"]
    assert dict(zip(listed.entry, listed.kind)) == expected and len(listed) == len(expected)
    reason = dict(zip(listed.entry, listed.reason))
    assert "HEIC/HEIF" in reason["Al_Gore/IMG_0001.HEIC"] and "pillow-heif" in reason["Al_Gore/IMG_0001.HEIC"]
    assert reason["Nothing readable/a.jpg"] == "empty file (0 bytes)" and reason["Empty/"] == "empty folder"

    text = summary.report()
    assert "no usable photo (every photo unreadable): Nothing readable" in text
    line = next(x for x in text.splitlines() if "cannot read" in x)
    assert "5 photo(s)" in line and "Al_Gore/IMG_0001.HEIC (unsupported image format .heic: HEIC/HEIF" in line
    assert "Phone only/IMG_0001.heic" in line and "... and 2 more" in line  # the first few, then a count
    assert "identity folder(s) without a photo: Empty/ (empty folder); Phone only/" in text
    assert "loose.jpg" in text and "Al_Gore/notes.txt" in text and str(work / "ingest_problems.csv") in text

    rows = _store_rows(work)
    for name in ("as bitmap.BMP", "as tiff.tif", "as webp.webp", "animated.gif"):
        row = rows[f"Al_Gore/{name}"]
        assert (row["problem"], row["width"], row["height"]) == (None, *src.size), name
        rgb = read_rgb(data / "Al_Gore" / name)
        if name != "animated.gif":  # lossless: the very pixels of the photo
            assert np.array_equal(rgb, np.asarray(src)), name
    first = np.asarray(Image.open(data / "Al_Gore" / "animated.gif").convert("RGB"))  # Pillow's frame 0
    gif = read_rgb(data / "Al_Gore" / "animated.gif")
    assert np.array_equal(gif, first) and np.abs(gif.astype(int) - np.asarray(second)).mean() > 20  # not frame 1

    shutil.rmtree(data / "Empty")
    (data / "Nothing readable" / "c.jpg").write_bytes(photo.read_bytes())
    summary = ingest(data, work, progress=False)  # the list is rewritten: what was fixed is gone from it
    listed = pd.read_csv(work / "ingest_problems.csv", dtype=str, keep_default_na=False)
    assert not {"Empty/", "Nothing readable/"} & set(listed.entry) and not summary.no_usable


def test_exact_duplicates_flag_every_copy_but_the_first(tmp_path, data):
    original = data / "Will Smith" / sorted(os.listdir(data / "Will Smith"))[0]
    copies = [data / "Will Smith/zz copy.png", data / "Tom Hanks/copy of will.png", data / "Al_Gore/0 first.png"]
    for c in copies:
        shutil.copy2(original, c)
    summary = ingest(data, tmp_path / "work", progress=False)

    group = sorted(str(p.relative_to(data)) for p in [original, *copies])  # the first by path carries no flag
    with LabelStore.open(tmp_path / "work") as store:
        dup = store.flags(kind="duplicate")
    assert sorted(dup.image) == group[1:] and summary.n_duplicates == 3
    assert {json.loads(d)["duplicate_of"] for d in dup.details} == {group[0]}
    assert dict(zip(dup.image, dup.identity)) == {p: p.split("/")[0] for p in group[1:]}


def test_challenge_layout_refuses_entries_outside_the_dataset(tmp_path, lfw_dir):
    data = tmp_path / "train"
    photos = sorted((lfw_dir / "Colin_Powell").iterdir())[:3] + sorted((lfw_dir / "Tony_Blair").iterdir())[:3]
    for k, p in enumerate(photos):
        dst = data / "images" / f"{k // 3:06d}" / f"{k % 3}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)
    (tmp_path / "secret.jpg").write_bytes(photos[0].read_bytes())
    meta = {
        "000000/0.jpg": 0, "000000/1.jpg": 1, "000001/0.jpg": 0, "000001/2.jpg": 1,  # 000000/2.jpg left out: real
        "../../secret.jpg": 1, "/etc/passwd": 0, str(tmp_path / "secret.jpg"): 0, "000001/9.jpg": 1, "000001\\1.jpg": 0,
    }
    (data / "meta.json").write_text(json.dumps(meta))

    summary = ingest(data, tmp_path / "work", progress=False)

    assert summary.layout == "challenge" and summary.dataset_root == (data / "images").resolve()
    rows = _store_rows(tmp_path / "work")
    assert {p: (r["identity_found"], r["fake_found"]) for p, r in rows.items()} == {
        "000000/0.jpg": ("000000", 0), "000000/1.jpg": ("000000", 1), "000000/2.jpg": ("000000", 0),
        "000001/0.jpg": ("000001", 0), "000001/1.jpg": ("000001", 0), "000001/2.jpg": ("000001", 1),
    }
    refused = {r.entry: r.reason for r in summary.refused}
    assert refused == {
        'meta.json "../../secret.jpg"': "points outside the dataset ('..')",
        'meta.json "/etc/passwd"': "absolute path (paths must be relative to the dataset)",
        f'meta.json "{tmp_path / "secret.jpg"}"': "absolute path (paths must be relative to the dataset)",
        'meta.json "000001/9.jpg"': "file does not exist",
    }
    assert summary.unlisted == ["000000/2.jpg"]
    text = summary.report()
    assert "1 photos are not in meta.json: counted as real (e.g. 000000/2.jpg)" in text
    assert all(entry in text for entry in refused)


@pytest.mark.parametrize(
    "meta, message",
    [
        ('{"A/1.jpg": 1,', "not valid JSON"),
        ('["A/1.jpg"]', "expected a JSON object"),
        ('{"A/1.jpg": 2}', r"not 0 \(real\) or 1"),
        ('{"A/1.jpg": "1"}', r"not 0 \(real\) or 1"),
        ('{"A/1.jpg": true}', r"not 0 \(real\) or 1"),
        ('{"A/1.jpg": 1, "A/1.jpg": 0}', "appears twice"),
        (b"\xff\xfe{}", "not UTF-8"),
        ('{"Al_Gore/Al_Gore_0001.jpg": 1, "./Al_Gore/Al_Gore_0001.jpg": 0}', "listed twice"),
        ('{"images/000000/0.jpg": 1, "data/Al_Gore/Al_Gore_0001.jpg": 0}', "none of its 2 entries names a photo"),
    ],
)
def test_malformed_meta_json_is_one_error_and_writes_nothing(tmp_path, data, meta, message):
    work = tmp_path / "work"
    ingest(data, work, progress=False)
    before = _store_rows(work)
    (data / "meta.json").write_bytes(meta if isinstance(meta, bytes) else meta.encode())
    with pytest.raises(LayoutError, match=message) as err:
        ingest(data, work, progress=False)
    assert str(data / "meta.json") in str(err.value)
    assert _store_rows(work) == before
    fresh = tmp_path / "fresh"
    with pytest.raises(LayoutError):
        ingest(data, fresh, progress=False)
    assert not fresh.exists()  # not even an empty store


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("file,identity\nx.jpg,A\n", "missing path"),
        ("path,identity,is_fake\nAl_Gore/a.jpg,A,yes\n", "is_fake must be 0 or 1"),
        ("path,identity\nAl_Gore/a.jpg,A,extra\n", "3 field"),
        ('path,identity\n"Al_Gore/a.jpg,A\n', "line"),
        ("path,identity\nAl_Gore/a.jpg,A\nAl_Gore/a.jpg,B\n", "already listed on line 2"),
        ("path,identity\n,A\n", "empty path"),
    ],
)
def test_malformed_csv_is_one_error_and_writes_nothing(tmp_path, data, text, message):
    listing = tmp_path / "list.csv"
    listing.write_text(text)
    with pytest.raises(LayoutError, match=message):
        ingest(None, tmp_path / "work", csv=listing, root=data, progress=False)
    assert not (tmp_path / "work").exists()


def test_csv_layout_reads_labels_and_refuses_paths_leaving_the_root(tmp_path, data):
    outside = tmp_path / "outside.jpg"
    shutil.copy2(next((data / "Al_Gore").iterdir()), outside)
    (data / "Al_Gore" / "link out.jpg").symlink_to(outside)
    (data / "Al_Gore" / "link in.jpg").symlink_to(next((data / "Colin_Powell").iterdir()))
    gore = sorted(p.name for p in (data / "Al_Gore").iterdir() if not p.is_symlink())
    lines = [
        "identity,path,is_fake",  # columns in any order
        f"Gore,Al_Gore/{gore[0]},0",
        f"Gore,Al_Gore/{gore[1]},1",
        f'"Ñ, José",{ACCENTED}/фото 0.jpg,0',
        "Gore,Al_Gore/link in.jpg,0",
        "Gore,Al_Gore/link out.jpg,1",
        "Gore,../outside.jpg,0",
        f"Gore,{outside},0",
        "Gore,Al_Gore/missing.jpg,0",
        f"a/b,Al_Gore/{gore[2]},0",
        f"..,Al_Gore/{gore[3]},0",
    ]
    listing = data / "labels.csv"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")

    summary = ingest(None, tmp_path / "work", csv=listing, progress=False)  # root: the CSV's folder

    rows = _store_rows(tmp_path / "work")
    assert {p: (r["identity_found"], r["fake_found"]) for p, r in rows.items()} == {
        f"Al_Gore/{gore[0]}": ("Gore", 0), f"Al_Gore/{gore[1]}": ("Gore", 1), f"{ACCENTED}/фото 0.jpg": ("Ñ, José", 0),
        "Al_Gore/link in.jpg": ("Gore", 0),
    }
    reasons = {r.entry.split(" ", 3)[-1]: r.reason for r in summary.refused}
    assert reasons == {
        '"Al_Gore/link out.jpg"': "points outside the dataset (symbolic link)",
        '"../outside.jpg"': "points outside the dataset ('..')",
        f'"{outside}"': "absolute path (paths must be relative to the dataset)",
        '"Al_Gore/missing.jpg"': "file does not exist",
        f'"Al_Gore/{gore[2]}"': "'a/b' is not a usable identity name (it must be one folder name, not a path)",
        f'"Al_Gore/{gore[3]}"': "'..' is not a usable identity name (it must be one folder name, not a path)",
    }
    assert all(r.entry.startswith("labels.csv line ") for r in summary.refused)
    with pytest.raises(LayoutError, match="not both"):
        read_layout(data, csv=listing)


def test_symlinks_and_the_work_folder_are_not_read_as_photos(tmp_path, data):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(data / "Al_Gore", elsewhere)
    (data / "Linked person").symlink_to(elsewhere, target_is_directory=True)
    (data / "Tom Hanks" / "escape.jpg").symlink_to(next(elsewhere.iterdir()))
    work = data / "work"  # a work folder inside the dataset: its crops must never become an identity
    (work / "cache").mkdir(parents=True)
    shutil.copy2(next((data / "Tom Hanks").glob("*.png")), work / "cache" / "crop.png")

    summary = ingest(data, work, progress=False)

    assert {r.entry: r.reason for r in summary.refused} == {
        "Linked person": "symbolic link pointing outside the dataset",
        "Tom Hanks/escape.jpg": "symbolic link pointing outside the dataset",
    }
    assert not any(p.startswith(("work/", "Linked person/")) for p in _store_rows(work))


def test_reingest_is_incremental_marks_missing_and_keeps_decisions(tmp_path, data, monkeypatch):
    work = tmp_path / "work"
    gore = sorted((data / "Al_Gore").iterdir())
    (data / "Al_Gore" / "broken.jpg").write_text("not a photo")
    ingest(data, work, progress=False)
    with LabelStore.open(work) as store:
        ids = store.image_ids([f"Al_Gore/{gore[0].name}", f"Al_Gore/{gore[1].name}"])
        first = ids[f"Al_Gore/{gore[0].name}"]
        moved = store.decide("move", reviewer="ana", image_ids=[first], target_identity="Colin_Powell")
        store.decide("remove", reviewer="ana", image_ids=[ids[f"Al_Gore/{gore[1].name}"]])
        n_rows_before = len(store.images(present_only=False))
        unreadable_ids = store.flags(kind="unreadable").id.tolist()

    # Same size and mtime but other bytes: only a re-hash could notice, so the stored hash proves none happened.
    same = gore[2]
    old_hash, st = sha256(same), same.stat()
    same.write_bytes(bytes(255 - b for b in same.read_bytes()))
    os.utime(same, ns=(st.st_atime_ns, st.st_mtime_ns))
    touched = gore[3]
    Image.open(touched).save(touched, quality=70)  # re-encoded: new content and a new mtime, must be read again
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    gore[1].unlink()  # the removed photo vanishes: missing
    shutil.copy2(gore[0], data / "Al_Gore" / "new.jpg")
    calls = []
    monkeypatch.setattr(ingest_module, "file_sha256", lambda p: calls.append(Path(p).name) or sha256(Path(p)))

    summary = ingest(data, work, progress=False)

    assert sorted(calls) == sorted([touched.name, "new.jpg", "broken.jpg"])  # unreadable files are always re-checked
    assert (summary.n_new, summary.n_reread, summary.n_missing) == (1, 2, 1)
    assert summary.n_unchanged == summary.n_files - 3
    rows = _store_rows(work)
    assert rows[f"Al_Gore/{same.name}"]["sha256"] == old_hash
    assert rows[f"Al_Gore/{touched.name}"]["sha256"] == sha256(touched)
    assert rows[f"Al_Gore/{gore[1].name}"]["present"] == 0 and len(rows) == n_rows_before + 1
    assert rows[f"Al_Gore/{gore[0].name}"]["identity"] == "Colin_Powell"  # the decision survived
    with LabelStore.open(work) as store:
        assert [d.action for d in store.history()] == ["remove", "move"] and store.history()[-1].id == moved
        assert store.flags(kind="duplicate").image.tolist() == ["Al_Gore/new.jpg"]  # new.jpg copies gore[0]
        assert store.flags(kind="unreadable").image.tolist() == ["Al_Gore/broken.jpg"]  # replaced, not doubled
        assert store.flags(kind="unreadable").id.tolist() != unreadable_ids
    shutil.copy2(gore[0], gore[1])  # the missing file comes back: present again, its removal still holds
    ingest(data, work, progress=False)
    back = _store_rows(work)[f"Al_Gore/{gore[1].name}"]
    assert (back["present"], back["removed"]) == (1, 1)


def test_a_work_folder_belongs_to_one_dataset(tmp_path, data, lfw_dir):
    work = tmp_path / "work"
    ingest(data, work, progress=False)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    with pytest.raises(IngestError, match="already holds the labels of"):
        ingest(other, work, progress=False)
    summary = ingest(other, work, force_root=True, progress=False)  # the dataset moved: same paths, decisions kept
    assert summary.n_missing == 0 and summary.dataset_root == other.resolve()


def test_cli_help_errors_and_summary(tmp_path, data, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "examples:" in capsys.readouterr().out
    (data / "meta.json").write_text("{oops")
    assert main([str(data), "--workdir", str(tmp_path / "w"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "meta.json: not valid JSON" in err and "Traceback" not in err
    (data / "meta.json").unlink()
    assert main([str(tmp_path / "nope"), "--workdir", str(tmp_path / "w")]) == 2
    assert "no such folder" in capsys.readouterr().err
    run = subprocess.run(
        [sys.executable, "-m", "labels.ingest", str(data), "--workdir", str(tmp_path / "w"), "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "ingested" in run.stdout and "identities" in run.stdout and "files/s" in run.stdout
