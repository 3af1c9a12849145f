"""Aligning a photo to the ArcFace 112x112 template: one face, 5 landmarks, a similarity transform, a warp.

Why it matters: every IR/ArcFace-family embedder was trained on crops in exactly this template (AdaFace's MTCNN path and
CVLFace's aligner produce it too); a crop that is shifted or scaled differently costs accuracy silently. So the template
lives here once, the transform is the least-squares similarity (Umeyama 1991, what insightface uses via scikit-image),
and the warp fills outside the photo with black (border value 0), as the reference crops do.

Outcomes are explicit: a crop with `method` "detected" | "center_crop" | "pre-aligned", or no crop and a `problem` that
says why ("no_face: ...", "bad_size: ..."), so a summary can count them and the review app can show them.

Example:
    >>> from embeddings.detectors import make_detector
    >>> result = align(read_rgb("ana/1.jpg"), make_detector("dlib"))
    >>> result.crop.shape, result.method                # ((112, 112, 3), 'detected')
    >>> align(read_rgb("glint/1.png"), None, aligned=True).method   # 'pre-aligned' (only the size is checked)
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from embeddings.detectors import Detector, choose_central, detector_id

CROP_SIZE = 112

# ArcFace reference points (x, y) in the 112x112 crop: left eye, right eye, nose tip, left / right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

# Bump when anything here changes the pixels of a crop: it is part of the crop cache key.
ALIGN_VERSION = 1

# A face whose eyes are closer than this (in source pixels) has too little detail to be worth embedding.
MIN_EYE_DISTANCE = 6.0

METHODS = ("detected", "center_crop", "pre-aligned")


@dataclass
class AlignResult:
    """What alignment made of one photo.

    crop: uint8 [112, 112, 3] RGB, or None when there is no usable face.
    landmarks: the 5 points [5, 2] in the source photo (None without a detection).
    box: the chosen face's box (x0, y0, x1, y1) in the source photo (None without a detection).
    method: "detected" | "center_crop" | "pre-aligned" | "" (no crop).
    problem: None when a face was detected or the photo was pre-aligned; else "no_face: <reason>" or
      "bad_size: <reason>" (kept on a centre-crop fallback too, so that a reviewer knows the crop is a guess).
    """

    crop: np.ndarray | None
    landmarks: np.ndarray | None = None
    box: np.ndarray | None = None
    method: str = ""
    problem: str | None = None


def align_id(detector: str | None, aligned: bool = False) -> str:
    """Key of an alignment setting: same id <=> same crops. Names the crop cache folder and is part of embedder ids."""
    if aligned:
        return f"prealigned-v{ALIGN_VERSION}"
    return f"{detector_id(detector or 'dlib')}-v{ALIGN_VERSION}"


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


def center_crop(rgb: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The central square of the photo resized to size x size: a crude stand-in when no face is detected."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    square = rgb[y : y + side, x : x + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


def _check_pre_aligned(rgb: np.ndarray) -> AlignResult:
    h, w = rgb.shape[:2]
    if (h, w) != (CROP_SIZE, CROP_SIZE):
        return AlignResult(
            None,
            problem=f"bad_size: {w}x{h} pixels, but --aligned expects {CROP_SIZE}x{CROP_SIZE} ArcFace-template crops",
        )
    return AlignResult(np.ascontiguousarray(rgb), landmarks=ARCFACE_TEMPLATE.copy(), method="pre-aligned")


def align(
    rgb: np.ndarray, detector: Detector | None, *, aligned: bool = False, center_crop_fallback: bool = False
) -> AlignResult:
    """Find the photo's subject and warp it to the ArcFace 112x112 template.

    rgb: HxWx3 uint8 RGB (as `labels.imagefile.read_rgb` returns). detector: from `embeddings.detectors.make_detector`
    (unused, and may be None, when aligned=True). aligned: the photos already are template crops; only their size is
    checked. center_crop_fallback: when no face is found, return the central square instead (method "center_crop", the
    problem kept).
    """
    if aligned:
        return _check_pre_aligned(rgb)
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
                m = similarity_transform(face.points)
            except ValueError as exc:
                problem = f"no_face: landmarks unusable ({exc})"
            else:
                return AlignResult(warp(rgb, m), landmarks=face.points, box=face.box, method="detected")
    if center_crop_fallback:
        return AlignResult(center_crop(rgb), method="center_crop", problem=problem)
    return AlignResult(None, problem=problem)
