"""The embedding pass end to end: caches, resume after SIGKILL, bad photos in a batch, fallbacks, pre-aligned mode.

Uses the real MobileFaceNet ONNX model (fast) and dlib detection on real LFW photos; results are compared with the
same photos pushed one by one through `align` + `Embedder.embed`, a path that shares no code with the pass's batching,
workers and caches.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from embeddings.align import FACE_CROP_POINTS, align, align_id, center_crop
from embeddings.cache import ShardStore, alignment_dtype, crop_path, embedding_dtype
from embeddings.detectors import DetectorError, in_middle_third, make_detector
from embeddings.embedders import make_embedder
from embeddings.options import EmbedOptions
from embeddings.pipeline import CropDataset, PassFailure, align_images, embed_images, embedding_cache_id
from labels.files import file_sha256
from labels.imagefile import read_rgb

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def onnx_embedder(models_dir):
    return make_embedder(f"onnx:{models_dir / 'mobilefacenet.onnx'}", device="cpu")


@pytest.fixture(scope="module")
def lfw_photos(lfw_dir):
    return [sorted(person.glob("*.jpg"))[0] for person in sorted(lfw_dir.iterdir())[:24]]


@pytest.fixture()
def odd_files(tmp_path):
    """An unreadable file, a blank image, a noise image and a path that does not exist."""
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "text.jpg").write_bytes(b"this is not a JPEG")
    cv2.imwrite(str(folder / "blank.png"), np.zeros((150, 150, 3), np.uint8))
    cv2.imwrite(str(folder / "noise.png"), np.random.default_rng(1).integers(0, 256, (150, 150, 3), dtype=np.uint8))
    return [folder / "text.jpg", folder / "blank.png", folder / "noise.png", folder / "gone.jpg"]


def _one_by_one(paths, embedder, detector):
    """Reference embeddings: align + embed each photo alone, no pass, no cache."""
    out = []
    for path in paths:
        crop = align(read_rgb(path), detector).crop
        out.append(embedder.embed(crop[None])[0][0])
    return np.stack(out)


def test_bad_photos_never_lose_the_batch(lfw_photos, odd_files, onnx_embedder, tmp_path):
    good = lfw_photos[:6]
    paths = [good[0], odd_files[0], good[1], odd_files[1], good[2], odd_files[2], odd_files[3], *good[3:]]
    result = embed_images(paths, onnx_embedder, cache_dir=tmp_path / "cache",
                          options=EmbedOptions(batch_size=32, workers=0, progress=False))
    assert result.status[1] == "unreadable: not an image"
    assert result.status[3].startswith("no_face: no face found")
    assert result.status[5].startswith("no_face: no face found")
    assert result.status[6] == "unreadable: cannot read file (No such file or directory)" and result.keys[6] == ""
    ok = [0, 2, 4, 7, 8, 9]
    assert [result.status[i] for i in ok] == ["ok"] * 6 and [result.method[i] for i in ok] == ["detected"] * 6
    assert np.isnan(result.embeddings[[1, 3, 5, 6]]).all() and np.isnan(result.norms[[1, 3, 5, 6]]).all()
    reference = _one_by_one(good, onnx_embedder, make_detector("dlib"))
    # Stored as float16: cosines agree to ~1e-3.
    np.testing.assert_allclose(result.embeddings[ok], reference, atol=2e-3)
    assert result.counts() == {"ok": 6, "no_face": 2, "unreadable": 2}
    assert result.keys[0] == file_sha256(good[0])


def test_the_dlib_pass_embeds_on_every_core_with_the_single_process_results(lfw_photos, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 usable cores")
    dlib = make_embedder("dlib")
    paths = lfw_photos[:16]
    one = embed_images(paths, dlib, cache_dir=tmp_path / "one", options=EmbedOptions(batch_size=4, workers=0,
                                                                                     progress=False))
    every = embed_images(paths, dlib, cache_dir=tmp_path / "every", options=EmbedOptions(batch_size=4, progress=False))
    assert one.embed_processes == 1 and one.summary().endswith("16 embedded in this run by 1 process)")
    assert every.embed_processes == len(os.sched_getaffinity(0))  # the default: a worker per core, each embedding
    assert every.summary().endswith(f"embedded in this run by {every.embed_processes} processes)")
    assert every.status == one.status == ["ok"] * 16
    assert every.embeddings.tobytes() == one.embeddings.tobytes() and every.norms.tobytes() == one.norms.tobytes()


def test_second_run_reuses_the_caches(lfw_photos, onnx_embedder, models_dir, tmp_path):
    cache = tmp_path / "cache"
    paths = lfw_photos[:8]
    first = embed_images(paths, onnx_embedder, cache_dir=cache, options=EmbedOptions(workers=1, progress=False))
    assert (first.aligned_now, first.embedded_now) == (8, 8)
    again = embed_images(paths, onnx_embedder, cache_dir=cache, options=EmbedOptions(workers=1, progress=False))
    assert (again.aligned_now, again.embedded_now) == (0, 0)
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    np.testing.assert_array_equal(again.norms, first.norms)
    # Another embedder on the same alignment reuses the crops, computes its own vectors.
    flipped = make_embedder(f"onnx:{models_dir / 'mobilefacenet.onnx'}", flip=True)
    other = embed_images(paths, flipped, cache_dir=cache, options=EmbedOptions(workers=0, progress=False))
    assert (other.aligned_now, other.embedded_now) == (0, 8)
    assert other.cache_id == embedding_cache_id(flipped.id, first.align_id) != first.cache_id
    # Crops are where the app looks for them, and are the crops `align` makes.
    crop = read_rgb(crop_path(cache, first.align_id, first.keys[0]))
    np.testing.assert_array_equal(crop, align(read_rgb(paths[0]), make_detector("dlib")).crop)
    # Another detector is another alignment: new crops, but the same person. (A worker builds its own onnxruntime
    # session beside the main process's: sessions do not survive a fork.)
    scrfd = embed_images(paths[:4], onnx_embedder, cache_dir=cache,
                         options=EmbedOptions(workers=1, progress=False,
                                              detector=f"scrfd:{models_dir / 'scrfd_2.5g_bnkps.onnx'}"))
    assert scrfd.align_id != first.align_id and scrfd.aligned_now == 4
    cosines = (scrfd.embeddings * first.embeddings[:4]).sum(1)
    assert (cosines > 0.8).all(), cosines


def test_duplicates_and_given_keys(lfw_photos, onnx_embedder, tmp_path):
    copy = tmp_path / "renamed.jpg"
    shutil.copy(lfw_photos[0], copy)
    result = embed_images([lfw_photos[0], copy, lfw_photos[1]], onnx_embedder, cache_dir=tmp_path / "c",
                          options=EmbedOptions(workers=0, progress=False))
    assert result.keys[0] == result.keys[1] and result.embedded_now == 2
    np.testing.assert_array_equal(result.embeddings[0], result.embeddings[1])
    given = embed_images(lfw_photos[:2], onnx_embedder, cache_dir=tmp_path / "c2", keys=["a1", "b2"],
                         options=EmbedOptions(workers=0, progress=False))
    assert given.keys == ["a1", "b2"] and given.status == ["ok", "ok"]
    with pytest.raises(ValueError, match="bad cache key '../x'"):
        embed_images(lfw_photos[:1], onnx_embedder, cache_dir=tmp_path / "c3", keys=["../x"],
                     options=EmbedOptions(progress=False))


def test_a_broken_detector_file_is_one_clear_error(lfw_photos, onnx_embedder, tmp_path):
    broken = tmp_path / "scrfd.onnx"
    broken.write_bytes(b"\x08\x07 truncated protobuf")
    with pytest.raises(DetectorError, match="scrfd.onnx: not a readable ONNX model"):
        embed_images(lfw_photos[:2], onnx_embedder, cache_dir=tmp_path / "c",
                     options=EmbedOptions(detector=f"scrfd:{broken}", workers=1, progress=False))


def scrfd_with_wrong_outputs(path: Path) -> Path:
    """A loadable SCRFD-shaped ONNX file (9 outputs) whose outputs have 7 values each: `ScrfdDetector.detect` then
    fails reshaping them into boxes (ValueError) on every photo, as a detector with a bug would."""
    import onnx
    from onnx import TensorProto, helper

    outputs = [f"out{i}" for i in range(9)]
    nodes = [helper.make_node("Constant", [], [name], value=helper.make_tensor(f"c{name}", TensorProto.FLOAT, [7],
                                                                                 [0.0] * 7)) for name in outputs]
    graph = helper.make_graph(nodes, "broken_scrfd",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, None, None])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [7]) for name in outputs])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_a_detector_that_raises_on_most_photos_stops_the_pass(lfw_photos, onnx_embedder, tmp_path):
    broken = scrfd_with_wrong_outputs(tmp_path / "scrfd_bug.onnx")
    options = EmbedOptions(detector=f"scrfd:{broken}", workers=0, progress=False)
    with pytest.raises(PassFailure, match=r"6 of the 6 photos aligned so far raised ValueError \(first: .*"
                                          r"no_face: alignment failed \(ValueError: cannot reshape"):
        embed_images(lfw_photos[:6], onnx_embedder, cache_dir=tmp_path / "c", options=options)


def test_centre_crop_fallback_reuses_the_no_face_verdict(lfw_photos, odd_files, onnx_embedder, tmp_path):
    paths = [lfw_photos[0], odd_files[2]]  # a face, and noise (no face)
    cache = tmp_path / "cache"
    plain = embed_images(paths, onnx_embedder, cache_dir=cache,
                         options=EmbedOptions(workers=0, progress=False, face_crops="no"))
    assert plain.status[1].startswith("no_face")
    fallback = embed_images(paths, onnx_embedder, cache_dir=cache,
                            options=EmbedOptions(workers=0, progress=False, face_crops="yes"))
    assert fallback.status == ["ok", "ok"] and fallback.method == ["detected", "center_crop"]
    assert (fallback.aligned_now, fallback.embedded_now) == (1, 1)  # the noise is not detected again
    # Too few faces (one) to measure where faces sit: the LFW-measured position.
    expected = center_crop(read_rgb(odd_files[2]), FACE_CROP_POINTS)
    np.testing.assert_array_equal(read_rgb(crop_path(cache, fallback.align_id, fallback.keys[1])), expected)
    np.testing.assert_allclose(fallback.embeddings[1], onnx_embedder.embed(expected[None])[0][0], atol=2e-3)
    auto = embed_images(paths, onnx_embedder, cache_dir=cache, options=EmbedOptions(workers=0, progress=False))
    assert auto.status == fallback.status  # made once, a centre crop counts unless face_crops is "no"
    again = embed_images(paths, onnx_embedder, cache_dir=cache,
                         options=EmbedOptions(workers=0, progress=False, face_crops="no"))
    assert again.status == plain.status and np.isnan(again.embeddings[1]).all() and again.aligned_now == 0


def test_an_off_centre_face_is_a_bystander_in_face_crops_and_kept_elsewhere(lfw_dir, lfw_photos, onnx_embedder,
                                                                            tmp_path):
    """In Tung_Chee-hwa_0001 dlib finds only the man at the photo's left edge, never Tung in the middle. LFW photos are
    face crops, whose labelled person is the central face: the pass takes the centre crop (weak alignment), and that
    crop is closer to Tung's other photos than the detected face is (an independent check of who is in it). Told the
    photos are not face crops, it embeds the detected face exactly as align() makes it. Reruns recompute nothing."""
    tung = sorted((lfw_dir / "Tung_Chee-hwa").glob("*.jpg"))
    paths = [tung[0], *lfw_photos]  # 25 photos: enough faces for "auto" to tell they are face crops
    options = dict(workers=1, progress=False)
    crops = embed_images(paths, onnx_embedder, cache_dir=tmp_path / "a", options=EmbedOptions(**options))
    assert crops.status[0] == "ok" and crops.method[0] == "center_crop" and set(crops.method[1:]) == {"detected"}
    assert crops.embedded_now == len(paths)
    detector = make_detector("dlib")
    detected = align(read_rgb(tung[0]), detector)
    assert not in_middle_third(detected.box, read_rgb(tung[0]).shape)
    mates = _one_by_one(tung[1:], onnx_embedder, detector).mean(0)
    by_detection = onnx_embedder.embed(detected.crop[None])[0][0]
    assert crops.embeddings[0] @ mates > by_detection @ mates + 0.1, (crops.embeddings[0] @ mates, by_detection @ mates)

    kept = embed_images(paths, onnx_embedder, cache_dir=tmp_path / "b",
                        options=EmbedOptions(face_crops="no", **options))
    assert kept.status[0] == "ok" and kept.method[0] == "detected" and kept.embedded_now == len(paths)
    np.testing.assert_allclose(kept.embeddings[0], by_detection, atol=2e-3)
    for cache, face_crops, first in (("a", "auto", crops), ("b", "no", kept)):
        again = embed_images(paths, onnx_embedder, cache_dir=tmp_path / cache,
                             options=EmbedOptions(face_crops=face_crops, **options))
        assert (again.aligned_now, again.embedded_now) == (0, 0) and again.method == first.method


def test_a_second_detector_looks_where_the_first_finds_no_face(lfw_photos, odd_files, onnx_embedder, models_dir,
                                                               tmp_path):
    scrfd = f"scrfd:{models_dir / 'scrfd_2.5g_bnkps.onnx'}"
    # A face dlib's HOG cannot see: turned on its side.
    sideways = tmp_path / "sideways.png"
    cv2.imwrite(str(sideways), cv2.rotate(cv2.imread(str(lfw_photos[1])), cv2.ROTATE_90_CLOCKWISE))
    paths = [lfw_photos[0], sideways]
    dlib_only = embed_images(paths, onnx_embedder, cache_dir=tmp_path / "a",
                             options=EmbedOptions(workers=0, progress=False, face_crops="no"))
    both = embed_images(paths, onnx_embedder, cache_dir=tmp_path / "b",
                        options=EmbedOptions(detector=f"dlib+{scrfd}", workers=1, progress=False, face_crops="no"))
    assert dlib_only.status[1].startswith("no_face") and both.status == ["ok", "ok"]
    assert both.align_id != dlib_only.align_id
    np.testing.assert_array_equal(both.embeddings[0], dlib_only.embeddings[0])  # dlib's faces: dlib's crops
    scrfd_crop = align(read_rgb(sideways), make_detector(scrfd)).crop
    np.testing.assert_allclose(both.embeddings[1], onnx_embedder.embed(scrfd_crop[None])[0][0], atol=2e-3)
    with pytest.raises(DetectorError, match="join two different detectors"):
        make_detector("dlib+dlib")


def test_a_detector_failing_on_a_few_photos_costs_only_those(lfw_photos, odd_files, onnx_embedder, tmp_path):
    """The second detector raises (see scrfd_with_wrong_outputs), but it only looks at the two photos without a face
    dlib can find: they get the failure as their status, the other photos are embedded and the pass goes on."""
    broken = scrfd_with_wrong_outputs(tmp_path / "scrfd_bug.onnx")
    paths = [*lfw_photos[:6], odd_files[1], odd_files[2]]
    result = embed_images(paths, onnx_embedder, cache_dir=tmp_path / "c",
                          options=EmbedOptions(detector=f"dlib+scrfd:{broken}", workers=0, progress=False))
    assert result.status[:6] == ["ok"] * 6
    assert all(s.startswith("no_face: alignment failed (ValueError: cannot reshape") for s in result.status[6:])
    again = embed_images(paths, onnx_embedder, cache_dir=tmp_path / "c",
                         options=EmbedOptions(detector=f"dlib+scrfd:{broken}", workers=0, progress=False))
    assert again.status == result.status and again.embedded_now == 0  # retried (not cached), not stopped: 2 of 8


def test_pre_aligned_mode_checks_sizes_and_embeds_the_files_as_they_are(glint_dir, lfw_photos, onnx_embedder,
                                                                         tmp_path):
    crops = sorted(next(glint_dir.iterdir()).glob("*.png"))[:5]
    result = embed_images([*crops, lfw_photos[0]], onnx_embedder, cache_dir=tmp_path,
                          options=EmbedOptions(aligned=True, workers=0, progress=False))
    assert result.status[:5] == ["ok"] * 5 and result.method[:5] == ["pre-aligned"] * 5
    assert result.status[5].startswith("bad_size: 150x150 pixels")
    direct = onnx_embedder.embed(np.stack([read_rgb(p) for p in crops]))[0]
    np.testing.assert_allclose(result.embeddings[:5], direct, atol=2e-3)


def test_align_images_and_crop_dataset_serve_training(lfw_photos, odd_files, tmp_path):
    out = align_images([*lfw_photos[:3], odd_files[0]], cache_dir=tmp_path,
                       options=EmbedOptions(workers=1, progress=False))
    assert [status for _, status in out] == ["ok", "ok", "ok", "unreadable: not an image"] and out[3][0] is None
    dataset = CropDataset([path for path, _ in out[:3]])
    detector = make_detector("dlib")
    for i in range(3):
        np.testing.assert_array_equal(dataset[i].numpy(), align(read_rgb(lfw_photos[i]), detector).crop)
    out[0][0].unlink()  # a crop deleted behind our back is made again
    again = align_images(lfw_photos[:1], cache_dir=tmp_path, options=EmbedOptions(workers=0, progress=False))
    assert again[0][0].exists()


_PASS_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from embeddings.embedders import make_embedder
    from embeddings.options import EmbedOptions
    from embeddings.pipeline import embed_images
    paths = [Path(line) for line in Path(sys.argv[1]).read_text().splitlines()]
    embedder = make_embedder(sys.argv[2], device="cpu")
    embed_images(paths, embedder, cache_dir=Path(sys.argv[3]),
                 options=EmbedOptions(batch_size=4, workers=1, progress=False, checkpoint_seconds=0))
    print("finished")
    """
)


def test_resume_after_sigkill_recomputes_only_what_is_missing(lfw_dir, models_dir, onnx_embedder, tmp_path):
    paths = [p for person in sorted(lfw_dir.iterdir())[:20] for p in sorted(person.glob("*.jpg"))[:3]]
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join(map(str, paths)))
    cache = tmp_path / "cache"
    script = tmp_path / "run_pass.py"
    script.write_text(_PASS_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    spec = f"onnx:{models_dir / 'mobilefacenet.onnx'}"
    proc = subprocess.Popen([sys.executable, str(script), str(listing), spec, str(cache)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    aid = align_id("dlib")
    folder = cache / "embeddings" / embedding_cache_id(onnx_embedder.id, aid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(folder.glob("shard-*.npy"))) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    try:  # the DataLoader worker holds the pipes too: it must die with the pass, or this waits forever
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a DataLoader worker outlived the killed pass")
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every shard the killed run left must read cleanly
        stored = len(ShardStore(folder, embedding_dtype(onnx_embedder.dim)))
        aligned = len(ShardStore(cache / "crops" / aid / "outcomes", alignment_dtype()))
    assert 0 < stored < len(paths), ("the pass was not killed mid-way", sorted(p.name for p in cache.rglob("*.npy")))

    resumed = embed_images(paths, onnx_embedder, cache_dir=cache,
                           options=EmbedOptions(batch_size=8, workers=1, progress=False))
    n_ok = resumed.status.count("ok")
    assert n_ok >= 0.95 * len(paths)
    assert resumed.embedded_now == n_ok - stored
    assert resumed.aligned_now == len(paths) - aligned
    clean = embed_images(paths, onnx_embedder, cache_dir=tmp_path / "clean",
                         options=EmbedOptions(batch_size=16, workers=0, progress=False))
    assert resumed.status == clean.status and resumed.method == clean.method and resumed.keys == clean.keys
    np.testing.assert_allclose(resumed.embeddings, clean.embeddings, atol=1e-6)
    np.testing.assert_allclose(resumed.norms, clean.norms, rtol=1e-6)


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from embeddings import cache
    from embeddings.embedders import make_embedder
    from embeddings.options import EmbedOptions
    from embeddings.pipeline import embed_images
    paths = [Path(line) for line in Path(sys.argv[1]).read_text().splitlines()]
    kill_after = int(sys.argv[4])
    delivered = 0
    add = cache.ShardStore.add

    def add_then_die(self, records):  # SIGKILL once `kill_after` embeddings have reached the embedding store
        global delivered
        if "emb" in self.dtype.names:
            if delivered + len(records) > kill_after:
                print(delivered, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            delivered += len(records)
        add(self, records)

    cache.ShardStore.add = add_then_die
    embed_images(paths, make_embedder(sys.argv[2], device="cpu"), cache_dir=Path(sys.argv[3]),
                 options=EmbedOptions(aligned=True, batch_size=16, workers=1, progress=False))
    """
)


def test_a_kill_loses_at_most_the_flush_window(glint_dir, models_dir, onnx_embedder, tmp_path):
    paths = sorted(glint_dir.rglob("*.png"))
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join(map(str, paths)))
    script = tmp_path / "kill_pass.py"
    script.write_text(_KILL_SCRIPT)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kill_after = 500
    proc = subprocess.run([sys.executable, str(script), str(listing), f"onnx:{models_dir / 'mobilefacenet.onnx'}",
                           str(cache), str(kill_after)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    delivered = int(proc.stdout.decode().split()[-1])
    assert kill_after - 16 < delivered <= kill_after
    window = EmbedOptions().checkpoint_rows  # a shard is written when this many rows are buffered (or 5 s passed)
    rerun = embed_images(paths, onnx_embedder, cache_dir=cache, options=EmbedOptions(aligned=True, progress=False))
    lost = rerun.embedded_now - (len(paths) - delivered)  # embedded before the kill, yet computed again
    assert 0 <= lost < window, (rerun.embedded_now, delivered)
    assert rerun.status == ["ok"] * len(paths)


def _records(keys, dim=4):
    rec = np.zeros(len(keys), embedding_dtype(dim))
    rec["key"] = [k.encode() for k in keys]
    rec["emb"] = np.arange(len(keys))[:, None]
    return rec


def test_shard_store_merges_small_shards_and_survives_damage(tmp_path):
    folder = tmp_path / "store"
    store = ShardStore(folder, embedding_dtype(4), flush_rows=1000, flush_seconds=0, merge_at=5)
    for i in range(4):  # flush_seconds=0: every add is a shard
        store.add(_records([f"k{i}a", f"k{i}b"]))
    assert len(list(folder.glob("shard-*.npy"))) == 4
    for i in range(4, 7):  # the fifth shard written sets off a merge of the five: a long run keeps few files
        store.add(_records([f"k{i}a", f"k{i}b"]))
    assert len(list(folder.glob("shard-*.npy"))) == 3
    store.add(_records(["k0a"]))  # a duplicate key is harmless
    store.merge_at = 4
    store.close()  # merges the (now four) small shards into one
    assert len(list(folder.glob("shard-*.npy"))) == 1
    reopened = ShardStore(folder, embedding_dtype(4))
    assert len(reopened) == 14
    found, rec = reopened.lookup(["k3b", "nope", "k6a"])
    assert found.tolist() == [True, False, True] and rec["emb"][:, 0].tolist() == [1, 0, 0]

    # A killed writer's temp file is ignored; a damaged shard is skipped with a warning, its keys count as missing.
    (folder / ".shard-123.npy.tmp").write_bytes(b"\x93NUMPY half a shard")
    writer = ShardStore(folder, embedding_dtype(4), flush_seconds=0)
    writer.add(_records(["x1", "x2"]))
    damaged = max(folder.glob("shard-*.npy"), key=lambda p: p.stat().st_mtime_ns)
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable cache shard ignored"):
        after = ShardStore(folder, embedding_dtype(4))
    assert after.contains(["x1", "k0a"]).tolist() == [False, True]
    with pytest.raises(Exception, match="another layout"):
        ShardStore(folder, embedding_dtype(8))
