"""labels.outputs on its own: what counts as ours, what is deleted, what is left and said (the commands' tests cover
each writer; the fault tests cover kills)."""
from __future__ import annotations

import json
import os

import pytest

from labels.outputs import OutputFolder, OutputFolderError, replacing


def test_only_listed_files_and_their_temporaries_are_deleted(tmp_path):
    out = OutputFolder.claim(tmp_path / "o", "labels.export")
    assert not (tmp_path / "o").exists()  # nothing on disk until the first write
    out.write("a/b/1.txt", "one")
    out.write("c.txt", "two")
    out.manage("cache")
    (tmp_path / "o" / "cache").mkdir()
    (tmp_path / "o" / "cache" / "shard").write_text("the cache's own")
    (tmp_path / "o" / "a" / "b" / ".1.txt.0123abcd.tmp").write_text("a killed atomic_write")
    assert out.unlisted() == []
    (tmp_path / "o" / "a" / "mine.txt").write_text("a user's")
    (tmp_path / "elsewhere.txt").write_text("outside")
    os.symlink(tmp_path / "elsewhere.txt", tmp_path / "o" / "link")
    (tmp_path / "o" / "empty").mkdir()
    assert out.unlisted() == ["a/mine.txt", "empty/", "link"]
    with pytest.raises(OutputFolderError, match="mine.txt exists and was not written by this tool"):
        out.add("a/mine.txt")
    left = out.remove_all()
    assert left == ["a/mine.txt", "empty/", "link", "cache/"]
    on_disk = sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*"))
    assert on_disk == ["a", "a/mine.txt", "cache", "cache/shard", "empty", "link", "manifest.json"]
    assert (tmp_path / "elsewhere.txt").read_text() == "outside"  # a link is removed as a link, never followed
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["files"] == []  # still ours, nothing listed


def test_shared_mode_owns_only_its_files_in_someone_elses_folder(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    sub = OutputFolder.claim(tmp_path, "curation.predict", manifest_name="sub.manifest.json", shared=True)
    sub.write("sub.csv", "pair_id,similarity\n")
    assert sub.unlisted() == [] and sub.remove_all() == []
    assert sorted(os.listdir(tmp_path)) == ["thesis.tex"]
    with pytest.raises(OutputFolderError, match="thesis.tex exists and was not written"):
        OutputFolder.claim(tmp_path, "curation.predict", manifest_name="t.manifest.json", shared=True).add("thesis.tex")


def test_replacing_removes_the_new_folder_when_building_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with replacing(tmp_path / "out", "labels.export") as new:
            new.write("x.txt", "half")
            raise RuntimeError("the export failed")
    assert os.listdir(tmp_path) == []
    with replacing(tmp_path / "out", "labels.export") as new:
        new.write("x.txt", "whole")
        new.save(counts={"exported": 1})
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["tool"], manifest["files"], manifest["counts"]) == ("facecur", ["x.txt"], {"exported": 1})
    assert new.root == tmp_path / "out" and os.listdir(tmp_path) == ["out"]
