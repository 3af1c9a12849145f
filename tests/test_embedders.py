"""The three embedder backends: real accuracy on real faces, exact input conventions, clear errors for bad files.

EERs are computed here with a plain threshold sweep (FAR = share of different-person pairs scoring >= t, FRR = share of
same-person pairs scoring < t, EER where they cross), independent of curation.scoring.metrics.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from embeddings import build_backbone, load_backbone, save_backbone
from embeddings.checkpoints import CheckpointError
from embeddings.detectors import choose_central, make_detector
from embeddings.align import ARCFACE_TEMPLATE, DLIB_CHIP_POINTS, align, similarity_transform, warp
from embeddings.embedders import EmbedderError, make_embedder
from embeddings.options import EmbedOptions
from embeddings.pipeline import embed_images
from embeddings.preprocess import ONNX_CONVENTION_KEY
from labels.imagefile import read_rgb


def eer(same: np.ndarray, different: np.ndarray) -> float:
    """Equal error rate by sweeping every observed score as the threshold."""
    thresholds = np.unique(np.concatenate([same, different]))
    frr = np.searchsorted(np.sort(same), thresholds, side="left") / len(same)
    far = 1.0 - np.searchsorted(np.sort(different), thresholds, side="left") / len(different)
    i = np.argmin(np.abs(far - frr))
    return float((far[i] + frr[i]) / 2)


def pair_scores(embeddings: np.ndarray, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    sims = embeddings @ embeddings.T
    same, different = [], []
    for i, j in combinations(range(len(labels)), 2):
        (same if labels[i] == labels[j] else different).append(sims[i, j])
    return np.array(same), np.array(different)


def test_eer_helper_on_known_scores():
    assert eer(np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.2, 0.3])) == 0.0
    assert eer(np.array([0.9, 0.8, 0.2]), np.array([0.1, 0.3, 0.85])) == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def glint_crops(glint_dir):
    """12 aligned crops of each of the 24 glint identities, and their identity index."""
    crops, labels = [], []
    for i, person in enumerate(sorted(glint_dir.iterdir())):
        for path in sorted(person.glob("*.png"))[:12]:
            crops.append(read_rgb(path))
            labels.append(i)
    return np.stack(crops), labels


def test_dlib_embedder_separates_lfw_people(lfw_dir, tmp_path):
    """dlib's ResNet on the chips the pass cuts for it: same-person pairs score above different-person."""
    people = [p for p in sorted(lfw_dir.iterdir()) if len(list(p.glob("*.jpg"))) >= 8][:25]
    paths, labels = [], []
    for i, person in enumerate(people):
        for path in sorted(person.glob("*.jpg"))[:8]:
            paths.append(path)
            labels.append(i)
    embedder = make_embedder("dlib")
    result = embed_images(paths, embedder, cache_dir=tmp_path, options=EmbedOptions(workers=1, progress=False))
    ok = [i for i, s in enumerate(result.status) if s == "ok"]
    assert len(ok) >= 0.97 * len(paths)
    assert result.embeddings.shape == (len(paths), 128)
    same, different = pair_scores(result.embeddings[ok], [labels[i] for i in ok])
    assert np.median(same) > np.median(different)  # dlib vectors are not centred: cosines of strangers are ~0.85
    rate = eer(same, different)
    assert rate < 0.03, rate  # measured 2.0% (199 photos, 700 same / 19,000 different pairs)


def test_dlib_chip_points_match_dlib_own_alignment(lfw_dir):
    """Re-measure where dlib's own face chip puts the ArcFace points: a coordinate image (R = x, G = y) is cut into a
    chip by dlib itself, which gives the chip -> photo mapping pixel by pixel."""
    import dlib

    from embeddings.detectors import dlib_model_path

    detector = make_detector("dlib")
    predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
    coords = np.zeros((150, 150, 3), np.uint8)
    coords[..., 0], coords[..., 1] = np.meshgrid(np.arange(150), np.arange(150))
    coords[..., 2] = 200  # marks pixels that come from the photo (the border is black)
    cy, cx = np.mgrid[:150, :150]
    measured = []
    for person in sorted(lfw_dir.iterdir())[:15]:
        rgb = read_rgb(sorted(person.glob("*.jpg"))[0])
        faces = detector.detect(rgb)
        face = faces[choose_central(faces, rgb.shape)]
        shape = predictor(rgb, dlib.rectangle(*(int(round(v)) for v in face.box)))
        chip = dlib.get_face_chip(coords, shape, size=150, padding=0.25).astype(np.float64)
        inside = np.abs(chip[..., 2] - 200) < 1
        design = np.stack([cx[inside], cy[inside], np.ones(inside.sum())], 1)
        chip_to_photo, *_ = np.linalg.lstsq(design, chip[..., :2][inside], rcond=None)
        m = np.vstack([chip_to_photo.T, [0, 0, 1]])
        photo_to_chip = np.linalg.inv(m)[:2]
        measured.append(face.points @ photo_to_chip[:, :2].T + photo_to_chip[:, 2])
    error = np.linalg.norm(np.mean(measured, axis=0) - DLIB_CHIP_POINTS, axis=1)
    assert error.max() < 3.0, error  # pixels of the 150x150 chip (points are ~53 px apart)


def test_dlib_pass_cuts_dlibs_own_chip_straight_from_the_photo(lfw_dir, tmp_path):
    """The dlib pass embeds 150x150 chips warped from the photo in one step, the way dlib cuts its own chip: the
    cached chips match `dlib.get_face_chip` (computed here by dlib itself from its own landmarks) to rounding, so the
    descriptors are dlib's; a chip re-cut from the 112x112 ArcFace crop (two interpolations, its bottom black) is
    further off. The 5-point template DLIB_CHIP_POINTS (used for faces without dlib's 68 landmarks) sits where a
    detector finds the points on those chips."""
    import dlib

    from embeddings.cache import crop_path, read_crop
    from embeddings.detectors import dlib_model_path

    paths = [sorted(person.glob("*.jpg"))[0] for person in sorted(lfw_dir.iterdir())[:24]]
    embedder = make_embedder("dlib")
    result = embed_images(paths, embedder, cache_dir=tmp_path, options=EmbedOptions(workers=1, progress=False))
    assert embedder.geometry.size == 150 and "dlibfacechip150" in result.align_id
    ok = [i for i, s in enumerate(result.status) if s == "ok"]
    assert len(ok) >= 22, result.status
    detector = make_detector("dlib")
    predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
    model = dlib.face_recognition_model_v1(str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))
    on_chip, own, two_step = [], [], []
    for i in ok:
        chip = read_crop(crop_path(tmp_path, result.align_id, result.keys[i]))
        assert chip.shape == (150, 150, 3)
        found = detector.detect(chip)
        if found:
            on_chip.append(found[choose_central(found, chip.shape)].points)
        rgb = read_rgb(paths[i])
        faces = detector.detect(rgb)
        face = faces[choose_central(faces, rgb.shape)]
        shape = predictor(rgb, dlib.rectangle(*(int(round(v)) for v in face.box)))
        reference = dlib.get_face_chip(rgb, shape, size=150, padding=0.25)
        difference = np.abs(reference.astype(int) - chip.astype(int))
        assert difference.mean() < 1.0 and difference[4:-4, 4:-4].max() <= 2, (paths[i], difference.max())
        own.append(np.array(model.compute_face_descriptor(reference)))
        arcface = align(rgb, detector).crop
        rechip = warp(arcface, similarity_transform(ARCFACE_TEMPLATE, DLIB_CHIP_POINTS), 150)
        two_step.append(np.array(model.compute_face_descriptor(rechip)))
    bias = np.linalg.norm(np.mean(on_chip, axis=0) - DLIB_CHIP_POINTS, axis=1)
    assert len(on_chip) >= 0.8 * len(ok) and bias.max() < 3.0, bias  # px of the 150 px chip (points ~53 px apart)

    def unit(x):
        return np.asarray(x) / np.linalg.norm(x, axis=1, keepdims=True)

    own, two_step, direct = unit(own), unit(two_step), result.embeddings[ok]
    distance_direct = np.linalg.norm(direct - own, axis=1).max()
    distance_two_step = np.linalg.norm(two_step - own, axis=1).mean()
    assert distance_direct < 0.03 < distance_two_step, (distance_direct, distance_two_step)


def test_onnx_mobilefacenet_separates_glint_people(models_dir, glint_crops):
    crops, labels = glint_crops
    embedder = make_embedder(f"onnx:{models_dir / 'mobilefacenet.onnx'}")
    unit, norm = embedder.embed(crops)
    assert unit.shape == (len(crops), 128) and embedder.dim == 128
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert (norm > 0).all()
    same, different = pair_scores(unit, labels)
    rate = eer(same, different)
    # Web-crawled, a few wrong labels: measured 5.2% on all 712 crops (4.9% with flip; 5.8% if fed BGR by mistake).
    assert rate < 0.08, rate


def _independent_input(crops: np.ndarray, bgr: bool, mean: float, std: float) -> np.ndarray:
    x = crops[..., ::-1] if bgr else crops
    return ((x.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2).copy()


def test_onnx_convention_is_read_from_metadata(models_dir, glint_crops, tmp_path):
    crops = glint_crops[0][:3]
    session = ort.InferenceSession(str(models_dir / "mobilefacenet.onnx"), providers=["CPUExecutionProvider"])

    def reference(x):
        raw = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    default = make_embedder(f"onnx:{models_dir / 'mobilefacenet.onnx'}").embed(crops)[0]
    np.testing.assert_allclose(default, reference(_independent_input(crops, False, 127.5, 128.0)), atol=1e-5)

    model = onnx.load(str(models_dir / "mobilefacenet.onnx"))
    model.metadata_props.add(key=ONNX_CONVENTION_KEY, value="adaface")
    tagged = tmp_path / "tagged.onnx"
    onnx.save(model, str(tagged))
    adaface = make_embedder(f"onnx:{tagged}").embed(crops)[0]
    np.testing.assert_allclose(adaface, reference(_independent_input(crops, True, 127.5, 127.5)), atol=1e-5)
    assert np.abs(adaface - default).max() > 1e-2

    model.metadata_props[0].value = "yuv"
    onnx.save(model, str(tagged))
    with pytest.raises(EmbedderError, match="'yuv' is not a known input convention"):
        make_embedder(f"onnx:{tagged}")


def test_ir_embedder_feeds_bgr_and_fuses_flips(tmp_path, glint_crops):
    torch.manual_seed(0)
    path = save_backbone(build_backbone("ir_18"), tmp_path / "ir18.pt")
    crops = glint_crops[0][:3]
    model = load_backbone(path)
    x = torch.from_numpy(_independent_input(crops, True, 127.5, 127.5))
    with torch.no_grad():
        unit, norm = model(x)
        raw = unit * norm
        flipped = model(x.flip(3))
    plain = make_embedder(f"ir:ir_18:{path}", device="cpu")
    got_unit, got_norm = plain.embed(crops)
    np.testing.assert_allclose(got_unit, unit.numpy(), atol=1e-5)
    np.testing.assert_allclose(got_norm, norm[:, 0].numpy(), rtol=1e-5)

    fused = (raw + flipped[0] * flipped[1]) / 2
    flip = make_embedder(f"ir:{path}", device="cpu", flip=True)  # depth read from the file
    got_unit, got_norm = flip.embed(crops)
    np.testing.assert_allclose(got_unit, (fused / fused.norm(dim=1, keepdim=True)).numpy(), atol=1e-5)
    np.testing.assert_allclose(got_norm, fused.norm(dim=1).numpy(), rtol=1e-5)
    assert flip.id == plain.id + "-flip" and plain.id.startswith("ir_18-") and plain.dim == 512


def test_ids_follow_the_weights(tmp_path):
    a = save_backbone(build_backbone("ir_18"), tmp_path / "a.pt")
    b = save_backbone(build_backbone("ir_18"), tmp_path / "b.pt")
    ida, idb = make_embedder(f"ir:ir_18:{a}").id, make_embedder(f"ir:ir_18:{b}").id
    assert ida != idb
    (tmp_path / "copy.pt").write_bytes(Path(a).read_bytes())
    assert make_embedder(f"ir:ir_18:{tmp_path / 'copy.pt'}").id == ida  # same bytes, same cache


def test_bad_specs_and_files_give_clear_errors(tmp_path, models_dir):
    with pytest.raises(EmbedderError, match="unknown embedder 'facenet'"):
        make_embedder("facenet")
    with pytest.raises(EmbedderError, match="missing.ckpt: checkpoint file not found"):
        make_embedder(f"ir:ir_101:{tmp_path / 'missing.ckpt'}")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CheckpointError, match="junk.bin"):
        make_embedder(f"ir:ir_101:{junk}")
    small = save_backbone(build_backbone("ir_18"), tmp_path / "small.pt")
    with pytest.raises(CheckpointError, match="IR-18.*ir_101"):
        make_embedder(f"ir:ir_101:{small}")
    with pytest.raises(EmbedderError, match="none.onnx: ONNX model file not found"):
        make_embedder(f"onnx:{tmp_path / 'none.onnx'}")
    with pytest.raises(EmbedderError, match="junk.bin: not a readable ONNX model"):
        make_embedder(f"onnx:{junk}")
    with pytest.raises(EmbedderError, match="scrfd_2.5g_bnkps.onnx: output"):
        make_embedder(f"onnx:{models_dir / 'scrfd_2.5g_bnkps.onnx'}")  # a detector, not an embedder
    embedder = make_embedder(f"onnx:{models_dir / 'mobilefacenet.onnx'}")
    with pytest.raises(ValueError, match=r"expected uint8 crops \[N, 112, 112, 3\]"):
        embedder.embed(np.zeros((2, 150, 150, 3), np.uint8))
    assert embedder.embed(np.zeros((0, 112, 112, 3), np.uint8))[0].shape == (0, 128)
    with pytest.raises(ValueError, match=r"expected uint8 crops \[N, 150, 150, 3\] \(dlibfacechip\)"):
        make_embedder("dlib").embed(np.zeros((2, 112, 112, 3), np.uint8))  # an ArcFace crop is not dlib's chip
