"""The per-photo work of an embedding pass, shared by both engines: decode and align one photo (or read its cached
crop), write its crop file, and the detector each process builds once.

`embeddings.pipeline` plans a pass and picks an engine; `pipeline` (local DataLoader workers) and
`embeddings.ray_engine` both call `PhotoAligner`, so neither engine needs the other's module.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from embeddings.align import ARCFACE, AlignResult, CropGeometry, align, center_crop
from embeddings.cache import METHOD_CODES, alignment_dtype, crop_path, encode_problem, read_crop, write_crop
from embeddings.detectors import Detector, DlibDetector, in_middle_third, make_detector
from labels.imagefile import ImageError, read_rgb

# Task modes: what a photo needs in this pass.
MODE_FROM_CACHE = 0  # read the cached crop (re-align if it is missing or damaged)
MODE_ALIGN = 1  # decode and align
MODE_FALLBACK = 2  # known to have no face: decode and take the centre crop (`PhotoAligner.face_points`)

# The problem recorded for a detected face outside the middle third of its photo. In face-crop photos (LFW style) the
# labelled person is the central face, so such a face is a bystander's and the pass takes the centre crop instead
# (`embeddings.pipeline`); elsewhere the face is kept. Until the pass knows which, the crop waits, not embedded.
OFF_CENTRE = "off_centre: the face found sits outside the middle third of the photo"

# The status of a photo whose alignment raised: "no_face: alignment failed (TypeName: message)". Not cached (the next
# run retries it), and counted by type by the pass, which stops when one type covers most photos.
ALIGN_FAILED = "no_face: alignment failed"


# Detectors by (spec, pid of the process that built them). The main process builds one before the workers start (a bad
# model file is then one clear error, not a failure per photo); forked workers reuse the fork-safe ones (dlib: plain
# memory, no threads; saves 2 s of loading per worker) and build the others (onnxruntime sessions, whose thread pools do
# not survive a fork) themselves, leaving the parent's copy untouched: even destroying it in the child can hang.
_DETECTORS: dict[tuple[str, int], Detector] = {}


def _record(dtype: np.dtype, key: str, result: AlignResult) -> np.void:
    """The alignment outcome as stored in the cache."""
    rec = np.zeros(1, dtype)
    rec["key"] = key.encode("ascii")
    rec["method"] = METHOD_CODES.index(result.method)
    if result.landmarks is not None:
        rec["points"] = result.landmarks
    if result.box is not None:
        rec["box"] = result.box
    rec["problem"] = encode_problem(result.problem)
    return rec[0]


@dataclass(frozen=True)
class PhotoAligner:
    """The per-photo work of a pass: decode + align one photo (or read its cached crop) and write its crop file.

    Plain settings, so it pickles: the local pass hands it to DataLoader workers, the Ray engine to its actors (which
    then write the crops into `cache_dir` themselves: on a cluster that folder must be on a shared filesystem).
    Call it with (path, content key, mode) -> (crop or None, new alignment record or None, error status or None).
    face_points: for MODE_FALLBACK, where faces sit in this dataset's photos (5 (x, y) fractions of the width and
    height, `embeddings.align.face_crop_points`). geometry: the crop the embedder takes (part of `align_id`).
    defer_off_centre: a detected face outside the middle third (OFF_CENTRE) is recorded and its crop written, but not
    handed over to be embedded (the pass decides later whether the photos are face crops).
    """

    detector: str
    aligned: bool
    cache_dir: Path
    align_id: str
    face_points: tuple | None = None
    geometry: CropGeometry = ARCFACE
    defer_off_centre: bool = True

    def __call__(self, path: str, key: str, mode: int) -> tuple[np.ndarray | None, np.void | None, str | None]:
        target = crop_path(self.cache_dir, self.align_id, key)
        if mode == MODE_FROM_CACHE:
            crop = read_crop(target)
            size = self.geometry.size
            if crop is not None and crop.shape == (size, size, 3):
                return crop, None, None
            mode = MODE_ALIGN  # missing or damaged: make it again
        try:
            rgb = read_rgb(path)
        except ImageError as exc:
            return None, None, f"unreadable: {exc.reason}"
        detector = None if self.aligned or mode == MODE_FALLBACK else get_detector(self.detector)
        try:
            if mode == MODE_FALLBACK:
                points = np.array(self.face_points, np.float32)
                crop = center_crop(rgb, points, self.geometry)
                result = AlignResult(crop, landmarks=points * [rgb.shape[1], rgb.shape[0]],
                                     method="center_crop")
            else:
                result = align(rgb, detector, aligned=self.aligned, geometry=self.geometry)
                if result.method == "detected" and not in_middle_third(result.box, rgb.shape):
                    result.problem = OFF_CENTRE
            if result.crop is not None:
                write_crop(target, result.crop)
        except Exception as exc:  # a bug or a freak image must cost this photo only, never the batch
            return None, None, f"{ALIGN_FAILED} ({type(exc).__name__}: {exc})"
        wait = self.defer_off_centre and result.problem == OFF_CENTRE
        return None if wait else result.crop, _record(alignment_dtype(), key, result), None


def failure_type(status: str) -> str | None:
    """The exception type named by an ALIGN_FAILED status ("ValueError"), None for any other status."""
    if not status.startswith(ALIGN_FAILED + " ("):
        return None
    return status[len(ALIGN_FAILED) + 2 :].split(":", 1)[0].rstrip(")")


def get_detector(spec: str, threads: int | None = None) -> Detector:
    """This process's detector for `spec`, built once (the pass builds it before starting workers; a caller that wants
    the loading time out of a measurement, or a clear error before a long run, may call it first).

    threads: for an ONNX detector built by this call; None = 1 in a DataLoader worker, else one per core.
    """
    key = (spec, os.getpid())
    if key not in _DETECTORS:
        inherited = [d for (s, _), d in _DETECTORS.items() if s == spec and _fork_safe(d)]
        if threads is None:
            threads = 1 if torch.utils.data.get_worker_info() is not None else 0
        _DETECTORS[key] = inherited[0] if inherited else make_detector(spec, threads=threads)
    return _DETECTORS[key]


def _fork_safe(detector: Detector) -> bool:
    return isinstance(detector, DlibDetector)


def single_threaded() -> None:
    """For a process that decodes and aligns beside others (DataLoader worker, Ray actor): one thread for torch and
    OpenCV, so that the workers together use the cores they were given, not each all of them."""
    torch.set_num_threads(1)
    cv2.setNumThreads(0)


Batch = tuple[list, np.ndarray | None, np.ndarray | None, int | None]
"""What an engine hands the driver per batch: ([(task index, has crop, new alignment record or None, error or None)],
unit embeddings [n_crops, D] and norms [n_crops] of the photos with a crop, in task order (None without an embedder),
the id of the process that embedded them (None without an embedder), which the pass counts for its report).
"""
