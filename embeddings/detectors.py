"""Face detectors that also give the 5 ArcFace landmarks, and the choice of one face per photo.

Why two: dlib's HOG detector + 68-point landmark predictor ship on PyPI (`dlib-bin` + `face-recognition-models`), so
every machine can align offline with no file from the user; an insightface-format SCRFD ONNX file (which a user may
bring) is more accurate on hard poses and small faces. Both return `Detection`s in the coordinates of the image they
were given, with the 5 points in ArcFace order (left eye, right eye, nose tip, left mouth corner, right mouth corner;
"left" = image left).

Each detector has an `id` that names it and its weights; the alignment cache key is built from it, so crops made by one
detector are never mistaken for another's. Two specs joined by "+" ("dlib+scrfd:<file>") make a `SecondOpinion`: the
second detector looks only at the photos where the first finds no face.

Example:
    >>> det = make_detector("dlib")                  # or make_detector("scrfd:/models/scrfd_2.5g_bnkps.onnx")
    >>> faces = det.detect(rgb)                      # list[Detection], any order
    >>> face = faces[choose_central(faces, rgb.shape)]
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from embeddings.ortsession import ort_session
from labels.cli import UserError
from labels.files import file_sha256


@dataclass
class Detection:
    """One face: box (x0, y0, x1, y1), 5 landmarks [5, 2] (x, y) in ArcFace order, detector confidence, and from
    dlib's detector all 68 of its landmarks [68, 2] (dlib cuts its own chip from them, `embeddings.align.DLIB_CHIP`)."""

    box: np.ndarray
    points: np.ndarray
    score: float
    landmarks68: np.ndarray | None = None


class Detector(Protocol):
    id: str

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """All faces in an HxWx3 uint8 RGB image."""
        ...


class DetectorError(UserError):
    """The detector cannot be built (missing or corrupt model file, unknown spec): a user error, not a bug."""


def choose_central(faces: list[Detection], shape: tuple[int, ...]) -> int:
    """Index of the face that is the photo's subject: large and near the centre.

    Uses insightface's rule (`area - 2 * squared distance of the box centre from the image centre`): in a portrait with
    bystanders the subject is both big and central; a somewhat bigger face at the edge loses to it. `shape` is the
    image's (H, W, ...).
    """
    if not faces:
        raise ValueError("no faces to choose from")
    boxes = np.stack([f.box for f in faces]).astype(np.float64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 - shape[1] / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 - shape[0] / 2
    return int(np.argmax(area - 2.0 * (cx**2 + cy**2)))


# ---------------------------------------------------------------------------------------------------------------- dlib


def dlib_model_path(name: str) -> Path:
    """Path of a model file shipped by the `face-recognition-models` package.

    The package's `__init__` imports `pkg_resources` (gone from recent setuptools), so it is located with `find_spec`,
    which reads the package directory without running its code.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorError("the pip package face-recognition-models is missing (pip install -r requirements.txt)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / name
        if path.is_file():
            return path
    raise DetectorError(f"face-recognition-models is installed but has no models/{name}; reinstall it")


# Indices in dlib's 68-point (iBUG 300-W) layout. The ArcFace template's eye points are eye centres, so the mean of each
# eye's 6 contour points; nose tip is point 30; mouth corners are the outer lip corners 48 and 54. Measured against
# SCRFD's keypoints on 300 LFW photos, these differ from SCRFD's by 4-7% of the inter-ocular distance per point (nose
# 7%); points 31-33 for the nose would differ by 18-28%, the mean of 30 and 33 by 8%
# (tests/test_align.py::test_dlib_points_agree_with_scrfd keeps this in check).
_LEFT_EYE = slice(36, 42)
_RIGHT_EYE = slice(42, 48)
_NOSE_TIP = 30
_MOUTH_LEFT, _MOUTH_RIGHT = 48, 54


def five_from_68(p68: np.ndarray) -> np.ndarray:
    """ArcFace-style 5 points [5, 2] from dlib's 68 landmarks [68, 2]."""
    return np.stack(
        [p68[_LEFT_EYE].mean(0), p68[_RIGHT_EYE].mean(0), p68[_NOSE_TIP], p68[_MOUTH_LEFT], p68[_MOUTH_RIGHT]]
    ).astype(np.float32)


DLIB_SEARCH_VERSION = 2  # which scales DlibDetector searches (2: upsampled also when no face is central)


def in_middle_third(box, shape: tuple[int, ...]) -> bool:
    """Whether a face box (x0, y0, x1, y1) has its centre in the middle third of an image of `shape` (H, W, ...),
    both ways: where a photo's subject is, whatever else is in it."""
    h, w = shape[:2]
    return abs((box[0] + box[2]) / 2 - w / 2) <= w / 6 and abs((box[1] + box[3]) / 2 - h / 2) <= h / 6


def _any_central(rects, shape: tuple[int, ...]) -> bool:
    return any(in_middle_third((r.left(), r.top(), r.right(), r.bottom()), shape) for r in rects)


@dataclass
class DlibDetector:
    """dlib's HOG frontal-face detector and 68-point landmark predictor.

    HOG finds faces down to ~80 px; smaller faces are found by letting dlib upsample the image (each step doubles it),
    tried only when the previous scale found nothing, or found faces only outside the middle third of the photo (a
    large bystander at the edge while the small subject in the middle goes unseen: LFW's Condoleezza_Rice_0005 is
    Colin Powell's face at scale 1), at most `max_upsample` steps and `max_upsampled_side` pixels. On 300 LFW photos
    (150x150) HOG alone finds a face in 92%, one upsampling step in 99.7%; 2 of LFW's 4,878 photos find their central
    face only upsampled. Huge photos are shrunk to `max_side` for detection (HOG time grows with pixels) and the
    landmarks are taken on the full-size image.
    """

    max_side: int = 1600
    max_upsample: int = 2
    max_upsampled_side: int = 1024

    def __post_init__(self) -> None:
        import dlib  # imported here so that importing this module stays cheap for the ONNX-only path

        self.id = detector_id("dlib")
        self._hog = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
        self._rect = dlib.rectangle

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        rgb = np.ascontiguousarray(rgb)
        scale = min(1.0, self.max_side / max(rgb.shape[:2]))
        small = rgb if scale == 1.0 else cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        upsample, rects, scores = 0, [], []
        while True:
            found, found_scores, _ = self._hog.run(small, upsample, 0.0)
            if found:  # a larger scale finds the faces of a smaller one too; kept if it finds none at all
                rects, scores = found, found_scores
            bigger = max(small.shape[:2]) * 2 ** (upsample + 1)
            if _any_central(rects, small.shape) or upsample == self.max_upsample or bigger > self.max_upsampled_side:
                break
            upsample += 1
        faces = []
        for r, s in zip(rects, scores):
            box = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64) / scale
            full = self._rect(*(int(round(v)) for v in box))
            shape = self._predictor(rgb, full)
            p68 = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)
            faces.append(Detection(box=box.astype(np.float32), points=five_from_68(p68), score=float(s),
                                   landmarks68=p68))
        return faces


# --------------------------------------------------------------------------------------------------------------- SCRFD


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression (IoU > threshold suppresses); indices of kept boxes, best first."""
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x1[i], x1[order[1:]]) - np.maximum(x0[i], x0[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[order[1:]]) - np.maximum(y0[i], y0[order[1:]]) + 1)
        iou = w * h / (area[i] + area[order[1:]] - w * h)
        order = order[1:][iou <= threshold]
    return keep


@dataclass
class ScrfdDetector:
    """Any insightface-format SCRFD ONNX detector with keypoints (`*_kps.onnx`, `*_bnkps.onnx`).

    Follows insightface's `model_zoo/scrfd.py`: RGB input scaled (x - 127.5) / 128, one score / box-distance / keypoint-
    distance output per stride, anchor centres on each stride's grid, NMS at IoU 0.4. The image is resized so that its
    long side is between `min_input_size` and `input_size` (so small photos are upsampled, big ones shrunk) and padded
    to a multiple of 32 (not to a square, which would waste time on padding). The detector's cost grows with the input's
    pixels: a 150x150 photo runs at 320 px, ~4x faster than at insightface's fixed 640.
    """

    path: Path
    input_size: int = 640
    min_input_size: int = 320
    threshold: float = 0.5
    nms_threshold: float = 0.4
    threads: int = 0  # intra-op threads; 0 = one per usable core

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            raise DetectorError(f"{self.path}: SCRFD model file not found")
        try:
            self._session = ort_session(self.path, threads=self.threads or None)
        except ValueError as exc:
            raise DetectorError(str(exc)) from exc
        self._input = self._session.get_inputs()[0].name
        outputs = self._session.get_outputs()
        layouts = {9: (3, 2), 15: (5, 1)}  # number of outputs with keypoints -> (number of strides, anchors per cell)
        if len(outputs) not in layouts:
            raise DetectorError(
                f"{self.path}: not an SCRFD detector with keypoints (expected 9 or 15 outputs, found {len(outputs)};"
                " models without 5 keypoints cannot align faces)"
            )
        self._strides_n, self._anchors = layouts[len(outputs)]
        self._strides = [8, 16, 32, 64, 128][: self._strides_n]
        self._names = [o.name for o in outputs]
        self.id = _scrfd_id(self.path, self.input_size, self.min_input_size)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        h, w = rgb.shape[:2]
        scale = min(self.input_size, max(self.min_input_size, max(h, w))) / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        ph, pw = -(-nh // 32) * 32, -(-nw // 32) * 32
        canvas = np.zeros((ph, pw, 3), np.float32)
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh), interpolation=interp)
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = self._session.run(self._names, {self._input: np.ascontiguousarray(blob)})
        n = self._strides_n
        all_scores, all_boxes, all_kps = [], [], []
        for i, stride in enumerate(self._strides):
            scores, dist, kdist = (np.asarray(outs[i + k * n]).reshape(-1, d) for k, d in enumerate((1, 4, 10)))
            gh, gw = ph // stride, pw // stride
            centres = np.stack(np.mgrid[:gh, :gw][::-1], axis=-1).reshape(-1, 2).astype(np.float32) * stride
            centres = np.repeat(centres, self._anchors, axis=0)
            keep = scores[:, 0] >= self.threshold
            c, d, kd = centres[keep], dist[keep] * stride, kdist[keep] * stride
            all_scores.append(scores[keep, 0])
            all_boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            all_kps.append(c[:, None, :] + kd.reshape(-1, 5, 2))
        scores = np.concatenate(all_scores)
        if not scores.size:
            return []
        boxes = np.concatenate(all_boxes) / scale
        kps = np.concatenate(all_kps) / scale
        return [
            Detection(box=boxes[i].astype(np.float32), points=kps[i].astype(np.float32), score=float(scores[i]))
            for i in _nms(boxes, scores, self.nms_threshold)
        ]


@dataclass
class SecondOpinion:
    """Two detectors: the second runs only where the first finds no face (dlib's HOG misses turned faces that SCRFD
    finds; the first stays the one that decides every other photo, so its crops are unchanged)."""

    first: Detector
    second: Detector

    def __post_init__(self) -> None:
        self.id = f"{self.first.id}+{self.second.id}"

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return self.first.detect(rgb) or self.second.detect(rgb)


def _scrfd_id(path: Path, input_size: int, min_input_size: int) -> str:
    return f"scrfd-{file_sha256(path)[:12]}-{min_input_size}-{input_size}"


def _parse(spec: str) -> tuple[str, Path | None]:
    if spec == "dlib":
        return "dlib", None
    if spec.startswith("scrfd:") and len(spec) > len("scrfd:"):
        return "scrfd", Path(spec[len("scrfd:") :]).expanduser()
    raise DetectorError(f"unknown detector {spec!r}: use 'dlib' or 'scrfd:<file.onnx>'")


def _split(spec: str) -> list[str]:
    parts = spec.split("+")
    if len(parts) != 2 or parts[0] == parts[1]:
        raise DetectorError(f"bad detector {spec!r}: join two different detectors with one '+', e.g. dlib+scrfd:<file>")
    return parts


def detector_id(spec: str) -> str:
    """The id `make_detector(spec).id` will have, without loading the models (cheap enough for the main process).

    dlib: the dlib version (its HOG and predictor are part of the package) and DLIB_SEARCH_VERSION; SCRFD: a hash of
    the weights file.
    """
    if "+" in spec:
        return "+".join(detector_id(part) for part in _split(spec))
    kind, path = _parse(spec)
    if kind == "dlib":
        import dlib

        return f"dlib68-{dlib.__version__}-d{DLIB_SEARCH_VERSION}"
    if not path.is_file():
        raise DetectorError(f"{path}: SCRFD model file not found")
    return _scrfd_id(path, ScrfdDetector.input_size, ScrfdDetector.min_input_size)


def make_detector(spec: str = "dlib", *, threads: int = 0) -> Detector:
    """Build a detector from its spec: "dlib" (offline default) or "scrfd:<file.onnx>".

    `threads` bounds the ONNX detector's threads (0 = one per usable core); DataLoader workers pass 1 so that several
    workers do not fight over the cores the embedding model needs. "A+B": `SecondOpinion(A, B)`.
    """
    if "+" in spec:
        first, second = (make_detector(part, threads=threads) for part in _split(spec))
        return SecondOpinion(first, second)
    kind, path = _parse(spec)
    if kind == "dlib":
        return DlibDetector()
    return ScrfdDetector(path, threads=threads)
