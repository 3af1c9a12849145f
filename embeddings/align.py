"""Aligning a photo to an embedder's crop template: one face, 5 landmarks, a similarity transform, a warp.

Why it matters: every IR/ArcFace-family embedder was trained on crops in exactly the ArcFace 112x112 template
(AdaFace's MTCNN path and CVLFace's aligner produce it too), and dlib's ResNet on its own 150x150 chip; a crop that is
shifted or scaled differently costs accuracy silently. So each template lives here once, as a `CropGeometry` that the
embedder declares (`Embedder.geometry`) and the pass warps each photo to in one step. The transform is the
least-squares similarity (Umeyama 1991, what insightface uses via scikit-image), and the warp fills outside the photo
with black (border value 0), as the reference crops do.

Outcomes are explicit: a crop with `method` "detected" | "center_crop" | "pre-aligned", or no crop and a `problem` that
says why ("no_face: ...", "bad_size: ..."), so a summary can count them and the review app can show them.

Example:
    >>> from embeddings.detectors import make_detector
    >>> result = align(read_rgb("ana/1.jpg"), make_detector("dlib"))
    >>> result.crop.shape, result.method                # ((112, 112, 3), 'detected')
    >>> align(rgb, make_detector("dlib"), geometry=DLIB_CHIP).crop.shape   # (150, 150, 3): dlib's own chip
    >>> align(read_rgb("glint/1.png"), None, aligned=True).method   # 'pre-aligned' (only the size is checked)
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from embeddings.detectors import Detection, Detector, choose_central, detector_id

CROP_SIZE = 112

# ArcFace reference points (x, y) in the 112x112 crop: left eye, right eye, nose tip, left / right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

# Where the 5 ArcFace points fall, on average, in dlib's own 150x150 face chip (`dlib.get_face_chip`, padding 0.25).
# Measured on 200 LFW faces by mapping each chip back to its photo (tests/test_embedders.py re-measures it on a few).
# A face with dlib's 68 landmarks gets dlib's own chip (see CropGeometry.dlib_padding); these 5 points cut the chip for
# any other face (an SCRFD detection, a pre-aligned crop) in one interpolation, as close to it as 5 points allow.
DLIB_CHIP_POINTS = np.array(
    [[48.29, 47.15], [101.06, 47.15], [74.00, 75.71], [51.21, 105.37], [98.67, 105.39]], dtype=np.float32
)


@dataclass(frozen=True)
class CropGeometry:
    """An embedder's input crop: its side in pixels and where the 5 points (ArcFace order) sit in it.

    name: part of the alignment id (so the crops of two geometries never share a cache folder); size: side in pixels;
    points: 5 (x, y) pairs, as a tuple so that the geometry pickles, compares and hashes as a plain value.
    dlib_padding: when set, a face that comes with dlib's 68 landmarks is cut the way dlib cuts its own chip
    (`dlib.get_face_chip_details` at this padding: a similarity fitted on 33 of the 68 landmarks, eyebrows, jaw and
    lower lip left out), not from the 5 points: five points carry each one's landmark noise into the crop, 33 average
    it out (LFW View 2 figures in the README).
    """

    name: str
    size: int
    points: tuple
    dlib_padding: float | None = None

    @property
    def template(self) -> np.ndarray:
        """The 5 points as float32 [5, 2]."""
        return np.array(self.points, np.float32)


def _as_points(a: np.ndarray) -> tuple:
    return tuple(tuple(float(v) for v in p) for p in a)


ARCFACE = CropGeometry("arcface", CROP_SIZE, _as_points(ARCFACE_TEMPLATE))
DLIB_CHIP = CropGeometry("dlibfacechip", 150, _as_points(DLIB_CHIP_POINTS), dlib_padding=0.25)

# Bump when anything here changes the pixels of every crop: it is part of the crop cache key. A change to one
# geometry's crops renames that geometry instead (its name is in the key too), so the other caches stay valid.
# Detected crops are at 2 (an off-centre face in a face-crop photo gives way to the centre crop, `embeddings.photo`);
# pre-aligned ones, which no detector touches, at 1.
ALIGN_VERSION = 2
PRE_ALIGNED_VERSION = 1

# A face whose eyes are closer than this (in source pixels) has too little detail to be worth embedding.
MIN_EYE_DISTANCE = 6.0

METHODS = ("detected", "center_crop", "pre-aligned")


@dataclass
class AlignResult:
    """What alignment made of one photo.

    crop: uint8 [size, size, 3] RGB in the requested `CropGeometry` (ArcFace 112x112 by default), or None when there
      is no usable face.
    landmarks: the 5 points [5, 2] in the source photo (None without a detection).
    box: the chosen face's box (x0, y0, x1, y1) in the source photo (None without a detection).
    method: "detected" | "center_crop" | "pre-aligned" | "" (no crop).
    problem: None when a face was detected or the photo was pre-aligned; else "no_face: <reason>" or
      "bad_size: <reason>" (kept on a centre-crop fallback too, so that a reviewer knows the crop is a guess); the
      pass adds "off_centre: ..." to a detected face outside the middle third of its photo (`embeddings.photo`).
    """

    crop: np.ndarray | None
    landmarks: np.ndarray | None = None
    box: np.ndarray | None = None
    method: str = ""
    problem: str | None = None


def align_id(detector: str | None, aligned: bool = False, geometry: CropGeometry = ARCFACE) -> str:
    """Key of an alignment setting: same id <=> same crops. Names the crop cache folder and is part of embedder ids.
    The ArcFace geometry adds nothing (the ids of crops cached before geometries existed stay valid)."""
    shape = "" if geometry == ARCFACE else f"-{geometry.name}{geometry.size}"
    if aligned:
        return f"prealigned{shape}-v{PRE_ALIGNED_VERSION}"
    return f"{detector_id(detector or 'dlib')}{shape}-v{ALIGN_VERSION}"


def similarity_transform(src: np.ndarray, dst: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping points src -> dst, as a 2x3 matrix.

    Umeyama's closed form; no reflection. Raises ValueError for degenerate points (all equal, or NaN).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or not np.isfinite(src).all():
        raise ValueError(f"landmarks must be finite and shaped like the template {dst.shape}, got {src.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-9:
        raise ValueError("degenerate landmarks (all points coincide)")
    cov = d.T @ s / len(src)
    u, sing, vt = np.linalg.svd(cov)
    sign = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0])
    rot = u @ np.diag(sign) @ vt
    scale = (sing * sign).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def dlib_chip_transform(landmarks68: np.ndarray, size: int, padding: float) -> np.ndarray:
    """The 2x3 photo -> chip transform of dlib's own face chip (`dlib.get_face_chip_details`) for 68 landmarks.

    dlib describes a chip as a box in the photo and an angle: chip pixel (u, v) is the box centre plus the offset from
    the chip centre, scaled by (box width - 1) / (size - 1) and rotated by the angle (checked against
    `dlib.extract_image_chip` in tests/test_align.py). The inverse of that is the transform `warp` takes.
    """
    import dlib  # only the dlib detector gives 68 landmarks, so dlib is there

    parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in np.asarray(landmarks68)])
    x0, y0 = parts[0].x, parts[0].y  # get_face_chip_details reads only the parts, not the detection's box
    details = dlib.get_face_chip_details(dlib.full_object_detection(dlib.rectangle(x0, y0, x0 + 1, y0 + 1), parts),
                                         size, padding)
    box = details.rect
    scale = (box.width() - 1) / (size - 1)  # dlib's drectangle width counts both edges: right - left + 1
    cos, sin = np.cos(details.angle), np.sin(details.angle)
    to_photo = np.array([[cos, -sin], [sin, cos]]) * scale
    centre = np.array([(box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2])
    m = np.empty((2, 3))
    m[:, :2] = np.linalg.inv(to_photo)
    m[:, 2] = (size - 1) / 2 - m[:, :2] @ centre
    return m


def face_transform(face: Detection, geometry: CropGeometry) -> np.ndarray:
    """The photo -> crop transform of one detected face: dlib's own chip from its 68 landmarks when the geometry asks
    for it and the detector gave them, else the least-squares similarity of the 5 points to the template."""
    if geometry.dlib_padding is not None and face.landmarks68 is not None:
        return dlib_chip_transform(face.landmarks68, geometry.size, geometry.dlib_padding)
    return similarity_transform(face.points, geometry.template)


def warp(rgb: np.ndarray, m: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Apply the 2x3 transform m and cut a size x size crop; outside the photo is black.

    A strong shrink (a face hundreds of pixels wide going to 112) is done in two steps, an area resize then the warp, so
    that the crop is not aliased: bilinear sampling alone skips most source pixels.
    """
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        rgb = cv2.resize(rgb, None, fx=scale * 2, fy=scale * 2, interpolation=cv2.INTER_AREA)
        m = m.copy()
        m[:, :2] /= scale * 2
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# Where the 5 points sit in a face-crop photo (LFW style: one face, centred, at a common scale), as fractions of its
# width and height: the median of dlib's points on 122 LFW photos (the pass measures its own dataset's when it can).
FACE_CROP_POINTS = np.array(
    [[0.4178, 0.4544], [0.5800, 0.4511], [0.5000, 0.5467], [0.4300, 0.6333], [0.5733, 0.6333]], dtype=np.float32
)
_FACE_CROP_MIN_FACES = 20  # fewer detected faces than this say nothing about where faces sit
_FACE_CROP_SPREAD = 0.08  # a face whose centre is within this (fraction of the photo) of the median one is in place
_FACE_CROP_SCALE = 0.3  # ... and whose eye distance is within this share of the median one
_FACE_CROP_SHARE = 0.9  # the photos are face crops when at least this share of their faces is in place


def face_crop_points(relative: np.ndarray, face_crops: str) -> np.ndarray | None:
    """Where faces sit in a dataset's photos, when its photos are face crops: the median of `relative` (the 5 points
    of detected faces [N, 5, 2] as fractions of their photo's width and height), else None.

    face_crops: "yes" (always; FACE_CROP_POINTS when fewer than 20 faces were found), "no" (never), "auto" (when at
    least 90% of the faces sit within 0.08 of the median centre at the median scale +-30%, that centre is within 0.15
    of the photo's, and the eyes are at least 8% of the width apart: LFW-like photos qualify, photos of people in
    scenes do not).

    Example:
        >>> face_crop_points(points / [150, 150], "auto")     # LFW: ~FACE_CROP_POINTS
    """
    if face_crops not in ("auto", "yes", "no"):
        raise ValueError(f"face_crops must be auto, yes or no, got {face_crops!r}")
    relative = np.asarray(relative, np.float64).reshape(-1, 5, 2)
    if face_crops == "no":
        return None
    if len(relative) < _FACE_CROP_MIN_FACES:
        return FACE_CROP_POINTS.copy() if face_crops == "yes" else None
    median = np.median(relative, axis=0)
    if face_crops == "auto":
        centre, median_centre = relative.mean(1), median.mean(0)
        eyes = np.linalg.norm(relative[:, 1] - relative[:, 0], axis=1)
        median_eyes = float(np.linalg.norm(median[1] - median[0]))
        in_place = (np.abs(centre - median_centre) <= _FACE_CROP_SPREAD).all(1) & (
            np.abs(eyes / max(median_eyes, 1e-9) - 1) <= _FACE_CROP_SCALE)
        if in_place.mean() < _FACE_CROP_SHARE or (np.abs(median_centre - 0.5) > 0.15).any() or median_eyes < 0.08:
            return None
    return median.astype(np.float32)


def center_crop(rgb: np.ndarray, points: np.ndarray = FACE_CROP_POINTS, geometry: CropGeometry = ARCFACE) -> np.ndarray:
    """The crop a face-crop photo gives when its face sits where faces sit in such photos (`points`, fractions of the
    width and height): the stand-in when no detector finds the face (method "center_crop", a weak alignment)."""
    h, w = rgb.shape[:2]
    m = similarity_transform(np.asarray(points, np.float64) * [w, h], geometry.template)
    return warp(rgb, m, geometry.size)


def _check_pre_aligned(rgb: np.ndarray, geometry: CropGeometry) -> AlignResult:
    h, w = rgb.shape[:2]
    if (h, w) != (CROP_SIZE, CROP_SIZE):
        return AlignResult(
            None,
            problem=f"bad_size: {w}x{h} pixels, but --aligned expects {CROP_SIZE}x{CROP_SIZE} ArcFace-template crops",
        )
    crop = np.ascontiguousarray(rgb)
    if geometry != ARCFACE:  # the template crop, re-cut to the embedder's geometry (what lies outside it is black)
        crop = warp(crop, similarity_transform(ARCFACE_TEMPLATE, geometry.template), geometry.size)
    return AlignResult(crop, landmarks=ARCFACE_TEMPLATE.copy(), method="pre-aligned")


def align(
    rgb: np.ndarray, detector: Detector | None, *, aligned: bool = False, geometry: CropGeometry = ARCFACE
) -> AlignResult:
    """Find the photo's subject and warp it to the template of `geometry` (default the ArcFace 112x112 one).

    rgb: HxWx3 uint8 RGB (as `labels.imagefile.read_rgb` returns). detector: from `embeddings.detectors.make_detector`
    (unused, and may be None, when aligned=True). aligned: the photos already are ArcFace template crops; only their
    size is checked. No crop when no usable face is found (the pass may then take `center_crop`, see
    embeddings.pipeline).
    """
    if aligned:
        return _check_pre_aligned(rgb, geometry)
    if detector is None:
        raise ValueError("align() needs a detector unless aligned=True")
    faces = detector.detect(rgb)
    problem = None
    if not faces:
        problem = f"no_face: no face found by {detector.id}"
    else:
        face = faces[choose_central(faces, rgb.shape)]
        eyes = float(np.linalg.norm(face.points[1] - face.points[0]))
        if eyes < MIN_EYE_DISTANCE:
            problem = f"no_face: face too small (eyes {eyes:.1f} px apart, need {MIN_EYE_DISTANCE:g})"
        else:
            try:
                m = face_transform(face, geometry)
            except ValueError as exc:
                problem = f"no_face: landmarks unusable ({exc})"
            else:
                return AlignResult(warp(rgb, m, geometry.size), landmarks=face.points, box=face.box, method="detected")
    return AlignResult(None, problem=problem)
