"""Alignment to the ArcFace template with the dlib and SCRFD detectors, on real LFW photos.

The check that a crop is right is independent of the code that made it: the *other* detector is run on the finished
112x112 crop and its landmarks must land on the template points.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from embeddings.align import (
    ARCFACE,
    ARCFACE_TEMPLATE,
    CROP_SIZE,
    DLIB_CHIP,
    FACE_CROP_POINTS,
    align,
    align_id,
    center_crop,
    dlib_chip_transform,
    face_crop_points,
    face_transform,
    similarity_transform,
    warp,
)
from embeddings.detectors import Detection, DetectorError, choose_central, make_detector
from embeddings.embedders import make_embedder
from labels.imagefile import read_rgb


@pytest.fixture(scope="module")
def dlib_detector():
    return make_detector("dlib")


@pytest.fixture(scope="module")
def scrfd_detector(models_dir):
    return make_detector(f"scrfd:{models_dir / 'scrfd_2.5g_bnkps.onnx'}")


@pytest.fixture(scope="module")
def lfw_photos(lfw_dir):
    """The first photo of 40 different people: varied faces, backgrounds, bystanders."""
    return [sorted(person.glob("*.jpg"))[0] for person in sorted(lfw_dir.iterdir())[:40]]


def _template_error(detector, crop: np.ndarray) -> float | None:
    """Mean distance (pixels of the 112 crop) between the landmarks found on the crop and the template."""
    faces = detector.detect(crop)
    if not faces:
        return None
    points = faces[choose_central(faces, crop.shape)].points
    return float(np.linalg.norm(points - ARCFACE_TEMPLATE, axis=1).mean())


def test_similarity_transform_recovers_a_known_transform():
    angle, scale, shift = np.deg2rad(17.0), 2.5, np.array([40.0, -12.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = (ARCFACE_TEMPLATE - shift) @ np.linalg.inv(rot).T  # points that rot, shift map exactly onto the template
    m = similarity_transform(src)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-8)
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((5, 2)))


def test_warp_fills_outside_the_photo_with_black():
    white = np.full((50, 50, 3), 255, np.uint8)
    crop = warp(white, np.array([[1.0, 0, 30], [0, 1.0, 30]]))  # the photo lands at (30..80, 30..80) of the crop
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert crop[:25].max() == 0 and crop[:, 85:].max() == 0
    assert crop[35:75, 35:75].min() == 255


def test_dlib_chip_transform_is_dlibs_own_mapping(lfw_photos, dlib_detector):
    """dlib_chip_transform reproduces where `dlib.extract_image_chip` samples the photo for dlib's own face chip: chips
    cut by dlib from images whose pixels hold their own x and y coordinates (bilinear sampling of a linear ramp is
    exact) give, per chip pixel, the photo point it came from."""
    import dlib

    for path in lfw_photos[:6]:
        rgb = read_rgb(path)
        face = dlib_detector.detect(rgb)[0]
        m = dlib_chip_transform(face.landmarks68, 150, 0.25)
        parts = dlib.points([dlib.point(int(x), int(y)) for x, y in face.landmarks68])
        details = dlib.get_face_chip_details(dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), parts), 150, 0.25)
        ys, xs = np.mgrid[: rgb.shape[0], : rgb.shape[1]].astype(np.float32)
        sampled_x = np.asarray(dlib.extract_image_chip(xs, details))
        sampled_y = np.asarray(dlib.extract_image_chip(ys, details))
        v, u = np.mgrid[:150, :150]
        inside = (sampled_x > 1) & (sampled_x < rgb.shape[1] - 2) & (sampled_y > 1) & (sampled_y < rgb.shape[0] - 2)
        photo = np.stack([sampled_x[inside], sampled_y[inside]], 1).astype(np.float64)
        chip = photo @ m[:, :2].T + m[:, 2]  # our photo -> chip transform applied to where dlib sampled
        assert inside.mean() > 0.5
        np.testing.assert_allclose(chip, np.stack([u[inside], v[inside]], 1), atol=1e-3)


def test_only_a_face_with_68_landmarks_gets_dlibs_own_chip(lfw_photos, dlib_detector, scrfd_detector):
    """A dlib detection is cut on its 68 landmarks; an SCRFD one (5 points) falls back to the 5-point template fit; the
    ArcFace geometry always uses the 5 points."""
    rgb = read_rgb(lfw_photos[0])
    dlib_face = dlib_detector.detect(rgb)[0]
    scrfd_face = scrfd_detector.detect(rgb)[0]
    assert dlib_face.landmarks68.shape == (68, 2) and scrfd_face.landmarks68 is None
    np.testing.assert_allclose(face_transform(dlib_face, DLIB_CHIP), dlib_chip_transform(dlib_face.landmarks68, 150,
                                                                                          0.25))
    np.testing.assert_allclose(face_transform(scrfd_face, DLIB_CHIP),
                               similarity_transform(scrfd_face.points, DLIB_CHIP.template))
    np.testing.assert_allclose(face_transform(dlib_face, ARCFACE), similarity_transform(dlib_face.points))
    five = similarity_transform(dlib_face.points, DLIB_CHIP.template)  # the two fits cut nearly the same chip
    corners = np.array([[0, 0, 1], [149, 149, 1]], float)
    photo_68 = np.linalg.solve(np.vstack([face_transform(dlib_face, DLIB_CHIP), [0, 0, 1]]), corners.T)[:2]
    photo_5 = np.linalg.solve(np.vstack([five, [0, 0, 1]]), corners.T)[:2]
    assert np.abs(photo_68 - photo_5).max() < 0.1 * rgb.shape[0]


@pytest.mark.parametrize("name,other", [("dlib", "scrfd"), ("scrfd", "dlib")])
def test_lfw_faces_are_found_and_land_on_the_template(name, other, lfw_photos, dlib_detector, scrfd_detector):
    detectors = {"dlib": dlib_detector, "scrfd": scrfd_detector}
    results = [align(read_rgb(p), detectors[name]) for p in lfw_photos]
    found = [r for r in results if r.crop is not None]
    assert len(found) / len(results) >= 0.95
    assert all(r.method == "detected" and r.problem is None and r.crop.shape == (112, 112, 3) for r in found)
    errors = [e for e in (_template_error(detectors[other], r.crop) for r in found) if e is not None]
    assert len(errors) >= 0.9 * len(found)
    # Measured: 3.1 px mean either way (the two detectors disagree by ~5% of the eye distance per point).
    assert np.mean(errors) < 4.5, errors
    assert np.median(errors) < 4.0


def test_dlib_points_agree_with_scrfd(lfw_photos, dlib_detector, scrfd_detector):
    """The 5 points derived from dlib's 68 (eye centres, nose tip 30, mouth corners 48/54) match SCRFD's definition."""
    errors = []
    for path in lfw_photos[:25]:
        rgb = read_rgb(path)
        a, b = dlib_detector.detect(rgb), scrfd_detector.detect(rgb)
        if a and b:
            pa, pb = a[choose_central(a, rgb.shape)].points, b[choose_central(b, rgb.shape)].points
            errors.append(np.linalg.norm(pa - pb, axis=1) / np.linalg.norm(pb[1] - pb[0]))
    per_point = np.mean(errors, axis=0)
    assert len(errors) >= 20
    assert per_point.max() < 0.12, per_point  # measured 0.04-0.07 of the inter-ocular distance


def test_central_face_wins_over_bystanders(lfw_photos, dlib_detector):
    """A photo of the subject in the middle with a smaller bystander near the edge: the subject is aligned."""
    subject, bystander = read_rgb(lfw_photos[0]), read_rgb(lfw_photos[1])
    canvas = np.full((300, 450, 3), 128, np.uint8)
    canvas[75:225, 150:300] = subject
    canvas[10:130, 10:130] = cv2.resize(bystander, (120, 120))
    result = align(canvas, dlib_detector)
    assert result.method == "detected"
    x0, y0, x1, y1 = result.box
    assert 150 <= (x0 + x1) / 2 <= 300 and 75 <= (y0 + y1) / 2 <= 225
    alone = align(subject, dlib_detector)
    np.testing.assert_allclose(result.landmarks - [150, 75], alone.landmarks, atol=1.0)


def test_choose_central_prefers_big_and_central():
    def face(x0, y0, size):
        return Detection(box=np.array([x0, y0, x0 + size, y0 + size], np.float32), points=np.zeros((5, 2)), score=1.0)

    shape = (400, 400, 3)
    assert choose_central([face(0, 0, 60), face(170, 170, 60)], shape) == 1  # same size: the central one
    assert choose_central([face(180, 180, 40), face(100, 100, 200)], shape) == 1  # central too, and much bigger
    assert choose_central([face(150, 150, 100), face(0, 0, 110)], shape) == 0  # slightly bigger at the edge loses


def test_small_face_is_found_by_upsampling(lfw_photos, dlib_detector):
    small = cv2.resize(read_rgb(lfw_photos[2]), (60, 60), interpolation=cv2.INTER_AREA)  # face ~25 px wide
    assert len(dlib_detector._hog(small, 0)) == 0  # HOG alone misses it
    result = align(small, dlib_detector)
    assert result.method == "detected"
    full_size = align(read_rgb(lfw_photos[2]), dlib_detector).landmarks
    np.testing.assert_allclose(result.landmarks / 60 * 150, full_size, atol=4.0)


def _centre_in_middle_third(box, shape) -> bool:
    x0, y0, x1, y1 = box
    return abs((x0 + x1) / 2 - shape[1] / 2) <= shape[1] / 6 and abs((y0 + y1) / 2 - shape[0] / 2) <= shape[0] / 6


@pytest.mark.parametrize("photo, bystander", [("Condoleezza_Rice/Condoleezza_Rice_0005.jpg", "Colin_Powell"),
                                               ("Laura_Bush/Laura_Bush_0032.jpg", "George_W_Bush")])
def test_a_central_face_hog_misses_at_scale_one_is_found_upsampled(photo, bystander, lfw_dir, dlib_detector):
    """HOG alone sees only the big bystander at the photo's edge; the subject in the middle, smaller, is found by
    upsampling, and the crop shows the labelled person: it is closer to the other photos of the folder than to the
    bystander's (dlib's embedder on dlib's chips, an independent check of who is in the crop)."""
    rgb = read_rgb(lfw_dir / photo)
    at_scale_one = dlib_detector._hog(rgb, 0)
    assert at_scale_one and not any(
        _centre_in_middle_third((r.left(), r.top(), r.right(), r.bottom()), rgb.shape) for r in at_scale_one)
    embedder = make_embedder("dlib")
    result = align(rgb, dlib_detector, geometry=embedder.geometry)
    assert result.method == "detected" and _centre_in_middle_third(result.box, rgb.shape)

    def centroid(folder: Path) -> np.ndarray:
        chips = [align(read_rgb(p), dlib_detector, geometry=embedder.geometry).crop
                 for p in sorted(folder.glob("*.jpg"))[:6] if p.name != Path(photo).name]
        mean = embedder.embed(np.stack([c for c in chips if c is not None]))[0].mean(0)
        return mean / np.linalg.norm(mean)

    unit = embedder.embed(result.crop[None])[0][0]
    own, other = unit @ centroid(lfw_dir / Path(photo).parent), unit @ centroid(lfw_dir / bystander)
    assert own > other, (own, other)


def test_huge_photo_gives_the_same_crop(lfw_photos, dlib_detector):
    """A 2400x2400 upscale is detected on a shrunk copy and warped after an area pre-shrink: the original's crop."""
    rgb = read_rgb(lfw_photos[3])
    huge = cv2.resize(rgb, (2400, 2400), interpolation=cv2.INTER_CUBIC)
    a, b = align(rgb, dlib_detector), align(huge, dlib_detector)
    assert b.method == "detected"
    diff = np.abs(a.crop.astype(float) - b.crop.astype(float))
    assert diff.mean() < 4.0, diff.mean()  # measured 1.5 (another person: 54)


def test_no_face_found(dlib_detector):
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    for image in (np.zeros((150, 150, 3), np.uint8), noise):
        result = align(image, dlib_detector)
        assert result.crop is None and result.method == "" and result.problem.startswith("no_face: no face found")


def _relative_points(photos, detector):
    out = []
    for path in photos:
        rgb = read_rgb(path)
        faces = detector.detect(rgb)
        if faces:
            out.append(faces[choose_central(faces, rgb.shape)].points / [rgb.shape[1], rgb.shape[0]])
    return np.array(out)


def test_face_crops_are_told_from_photos_of_people_in_scenes(lfw_photos, dlib_detector):
    relative = _relative_points(lfw_photos, dlib_detector)
    assert len(relative) >= 38
    points = face_crop_points(relative, "auto")
    assert points is not None and np.abs(points - FACE_CROP_POINTS).max() < 0.03  # LFW: where the constant says
    # The same faces pasted at random places and sizes in larger photos: not face crops.
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.3, 1.0, (len(relative), 1, 1))
    scattered = relative * scale + rng.uniform(0, 1 - scale, (len(relative), 1, 2))
    assert face_crop_points(scattered, "auto") is None
    np.testing.assert_array_equal(face_crop_points(scattered, "yes"), np.median(scattered, 0).astype(np.float32))
    assert face_crop_points(relative, "no") is None
    np.testing.assert_array_equal(face_crop_points(relative[:5], "yes"), FACE_CROP_POINTS)  # too few to measure
    assert face_crop_points(relative[:5], "auto") is None


def test_the_centre_crop_of_a_face_crop_photo_is_near_its_detected_crop(lfw_photos, dlib_detector):
    """The fallback for a face-crop photo with no face found: close to what a detection would have given, and much
    closer than the photo's central square (the crude stand-in it replaced)."""
    guess, square = [], []
    for path in lfw_photos[:20]:
        rgb = read_rgb(path)
        detected = align(rgb, dlib_detector).crop.astype(np.float64)
        guess.append(np.abs(center_crop(rgb).astype(np.float64) - detected).mean())
        side = min(rgb.shape[:2])
        central = cv2.resize(rgb[:side, :side], (112, 112), interpolation=cv2.INTER_AREA).astype(np.float64)
        square.append(np.abs(central - detected).mean())
    assert np.median(guess) < 0.5 * np.median(square), (np.median(guess), np.median(square))


def test_pre_aligned_mode_only_checks_the_size(glint_dir, lfw_photos):
    crop = read_rgb(next(next(glint_dir.iterdir()).glob("*.png")))
    ok = align(crop, None, aligned=True)
    assert ok.method == "pre-aligned" and ok.problem is None
    np.testing.assert_array_equal(ok.crop, crop)
    bad = align(read_rgb(lfw_photos[0]), None, aligned=True)
    assert bad.crop is None
    assert bad.problem.startswith("bad_size: 150x150 pixels") and "112x112" in bad.problem


def test_detector_specs_and_ids(models_dir, tmp_path):
    assert align_id("dlib") != align_id(f"scrfd:{models_dir / 'scrfd_2.5g_bnkps.onnx'}") != align_id(None, aligned=True)
    with pytest.raises(DetectorError, match="unknown detector"):
        make_detector("mtcnn")
    with pytest.raises(DetectorError, match="not found"):
        make_detector(f"scrfd:{tmp_path / 'none.onnx'}")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(DetectorError, match="junk.onnx: not a readable ONNX model"):
        make_detector(f"scrfd:{junk}")
    with pytest.raises(DetectorError, match="not an SCRFD detector with keypoints"):
        make_detector(f"scrfd:{models_dir / 'mobilefacenet.onnx'}")
