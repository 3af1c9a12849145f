"""Offline synthetic deepfakes, for datasets that have none: `python -m curation.fakes DATA --out OUT`.

Why: the recipe's hardest negatives are "a real photo of A vs a deepfake of A". A dataset without deepfakes (LFW, a
company's own photos) cannot teach that, so this module makes stand-ins with two classic techniques that run on a CPU
with the dlib models pip ships:
- **swap**: A's face (inside the jaw line and brows), from one of A's real photos, placed by a similarity transform on
  the 68 dlib landmarks of someone else's photo and blended with OpenCV's seamless cloning (Poisson blending). A's
  facial proportions are kept (only rotation, scale and shift), so the result looks like A on B's head, skin and light.
- **morph**: a landmark-aligned morph (Delaunay triangles on the 68 landmarks plus the frame) of A's photo with B's,
  weighted towards A (default 65% A), in A's photo frame.

A deepfake of A must look like A: that is what makes it a hard negative. Each fake is kept only if dlib finds a face in
it again.

**These are much weaker than the diffusion/GAN deepfakes of real benchmarks** (Kryptonite's, for one): seams, colour
mismatches and double contours are easy tells, so a model that rejects them has not learned to reject modern fakes. They
are good for exercising the pipeline (pairs with own-deepfake negatives, per-type error rates) and for the noisy-vs-clean
benchmark; train for deployment on real deepfakes when you have them.

OUT is a complete dataset in the challenge layout: `OUT/images/<identity>/<file>` (real photos hard-linked, or copied
across file systems) plus the fakes as `OUT/images/<identity>/fake_<kind>_<k>.jpg`, `OUT/meta.json` mapping each
`<identity>/<file>` to 0 (real) or 1 (deepfake), `OUT/fakes.csv` saying which photos each fake was made from, and
`OUT/manifest.json` listing every file written (OUT is refused unless it is absent, empty or an earlier fakes output:
see labels.outputs).

Example:
    python -m curation.fakes ~/data/lfw --out ~/data/lfw_with_fakes --per-identity 4
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from embeddings.align import similarity_transform
from embeddings.detectors import DlibDetector, choose_central, dlib_model_path
from labels.cli import UserError
from labels.files import atomic_write, write_json
from labels.imagefile import ImageError, read_rgb
from labels.layouts import read_layout
from labels.outputs import OutputFolder

KINDS = ("swap", "morph")
COMMAND = "curation.fakes"

# dlib 68-point indices: 0-16 jaw line, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth. Swapping the whole hull (jaw
# included) keeps A's face shape: with the inner face alone (17-67) dlib placed the result as close to B as to A.
FACE = np.arange(68)


@lru_cache(maxsize=1)
def _landmarker():
    import dlib

    predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
    return DlibDetector(), predictor, dlib.rectangle


def landmarks68(rgb: np.ndarray) -> np.ndarray | None:
    """The 68 dlib landmarks [68, 2] (float32, x then y) of the photo's subject, or None when dlib finds no face.

    Detection and the choice of the central face are the alignment's own (embeddings.detectors), so a fake is made of
    the face the embedding pass would pick.
    """
    detector, predictor, rect = _landmarker()
    faces = detector.detect(rgb)
    if not faces:
        return None
    box = faces[choose_central(faces, rgb.shape)].box
    shape = predictor(np.ascontiguousarray(rgb), rect(*(int(round(float(v))) for v in box)))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def _transform(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    return (points @ m[:, :2].T + m[:, 2]).astype(np.float32)


def face_swap(source: np.ndarray, source_pts: np.ndarray, target: np.ndarray, target_pts: np.ndarray) -> np.ndarray:
    """Put the face of `source` (identity A) onto `target` (someone else): a deepfake of A in B's photo.

    Inputs: RGB uint8 images and their 68 landmarks. Output: an RGB uint8 image the size of `target`.
    Raises ValueError when the faces cannot be placed (degenerate landmarks, a face at the very edge).
    """
    m = similarity_transform(source_pts[FACE], target_pts[FACE])
    h, w = target.shape[:2]
    warped = cv2.warpAffine(source, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return _clone_face(warped, target, _transform(source_pts[FACE], m))


def _clone_face(source: np.ndarray, target: np.ndarray, face_pts: np.ndarray) -> np.ndarray:
    """Poisson-blend the face hull `face_pts` of `source` into `target` (same size, RGB uint8)."""
    h, w = target.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(face_pts).astype(np.int32)), 255)
    # A little margin around the landmarks keeps the brows and chin whole; Poisson blending hides the seam.
    size = max(3, int(0.06 * (face_pts[:, 0].max() - face_pts[:, 0].min())) | 1)
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    mask[:2, :] = mask[-2:, :] = mask[:, :2] = mask[:, -2:] = 0  # seamlessClone needs the region inside the frame
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("the face falls outside the photo")
    centre = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
    try:
        # Poisson blending works per channel, so RGB goes in and comes out as it is.
        return cv2.seamlessClone(np.ascontiguousarray(source), np.ascontiguousarray(target), mask, centre, cv2.NORMAL_CLONE)
    except cv2.error as exc:
        raise ValueError(f"seamless cloning failed ({exc})") from exc


def _frame_points(w: int, h: int) -> np.ndarray:
    xs, ys = [0, w // 2, w - 1], [0, h // 2, h - 1]
    return np.array([(x, y) for y in ys for x in xs if (x, y) != (w // 2, h // 2)], dtype=np.float32)


def _triangles(points: np.ndarray, w: int, h: int) -> list[tuple[int, int, int]]:
    """Delaunay triangles of `points`, as index triples (OpenCV's Subdiv2D, so no scipy)."""
    subdiv = cv2.Subdiv2D((0, 0, w, h))
    clipped = np.clip(points, 0, [w - 1, h - 1])
    for p in clipped:
        subdiv.insert((float(p[0]), float(p[1])))
    lookup = {(round(float(p[0]), 2), round(float(p[1]), 2)): i for i, p in enumerate(clipped)}
    out = []
    for t in subdiv.getTriangleList():
        idx = [lookup.get((round(float(t[2 * j]), 2), round(float(t[2 * j + 1]), 2))) for j in range(3)]
        if None not in idx and len(set(idx)) == 3:
            out.append(tuple(idx))
    return out


def _warp_triangle(src: np.ndarray, dst: np.ndarray, t_src: np.ndarray, t_dst: np.ndarray) -> None:
    """Affine-warp one triangle of `src` onto the same-numbered triangle of `dst` (float32 images, in place)."""
    x, y, w, h = cv2.boundingRect(np.round(t_dst).astype(np.int32))
    if w == 0 or h == 0:
        return
    sx, sy, sw, sh = cv2.boundingRect(np.round(t_src).astype(np.int32))
    patch = src[sy : sy + sh + 1, sx : sx + sw + 1]
    if patch.size == 0:
        return
    m = cv2.getAffineTransform((t_src - [sx, sy]).astype(np.float32), (t_dst - [x, y]).astype(np.float32))
    warped = cv2.warpAffine(patch, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    mask = np.zeros((h, w, 1), np.float32)
    cv2.fillConvexPoly(mask, np.round(t_dst - [x, y]).astype(np.int32), (1.0,), cv2.LINE_AA)
    region = dst[y : y + h, x : x + w]
    hh, ww = region.shape[:2]
    region[:] = region * (1 - mask[:hh, :ww]) + warped[:hh, :ww] * mask[:hh, :ww]


def face_morph(
    a: np.ndarray, a_pts: np.ndarray, b: np.ndarray, b_pts: np.ndarray, weight_a: float = 0.65
) -> np.ndarray:
    """A landmark-aligned morph of A's photo with B's, `weight_a` of the way to A, in A's photo frame.

    B is first brought into A's frame by a similarity transform on the landmarks, then both are warped triangle by
    triangle onto the weighted mean landmarks and cross-dissolved. Output: RGB uint8, the size of `a`.
    """
    if not 0.5 <= weight_a <= 1.0:
        raise ValueError(f"weight_a must be in [0.5, 1] so the morph still looks like A, got {weight_a}")
    h, w = a.shape[:2]
    m = similarity_transform(b_pts, a_pts)
    b_in_a = cv2.warpAffine(b, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    frame = _frame_points(w, h)
    pa = np.vstack([a_pts, frame])
    pb = np.vstack([_transform(b_pts, m), frame])
    pm = weight_a * pa + (1 - weight_a) * pb
    fa, fb = a.astype(np.float32), b_in_a.astype(np.float32)
    wa, wb = fa.copy(), fb.copy()
    for i, j, k in _triangles(pm, w, h):
        tri = [i, j, k]
        _warp_triangle(fa, wa, pa[tri], pm[tri])
        _warp_triangle(fb, wb, pb[tri], pm[tri])
    morph = np.clip(weight_a * wa + (1 - weight_a) * wb + 0.5, 0, 255).astype(np.uint8)
    # Only the face is a blend: hair, background and clothes stay A's (a cross-dissolve there shows double contours).
    return _clone_face(morph, np.clip(wa + 0.5, 0, 255).astype(np.uint8), pm[FACE])


def shape_distance(p: np.ndarray, q: np.ndarray) -> float:
    """How differently two faces are posed and shaped: RMS landmark residual after the best similarity transform,
    relative to the face's size. Small values make clean swaps (the target's head fits the source's face)."""
    placed = _transform(p, similarity_transform(p, q))
    size = float(np.sqrt(((q - q.mean(0)) ** 2).sum(1).mean()))
    return float(np.sqrt(((placed - q) ** 2).sum(1).mean()) / max(size, 1e-6))


@dataclass(frozen=True)
class Photo:
    """A photo of the input dataset: its identity, path relative to DATA, and whether DATA already marks it a fake."""

    identity: str
    rel: str
    is_fake: bool


@dataclass
class FakesSummary:
    """What `make_fakes` did, for the end-of-run summary."""

    identities: int = 0
    real_photos: int = 0
    fakes_made: dict[str, int] | None = None
    fakes_kept_from_input: int = 0
    identities_skipped: int = 0  # identities done by an earlier, interrupted run
    identities_without_fakes: int = 0  # no source photo with a detectable face, or every attempt failed
    failed_attempts: int = 0

    def describe(self) -> str:
        made = ", ".join(f"{n:,} {kind}" for kind, n in (self.fakes_made or {}).items())
        return (
            f"{self.identities:,} identities, {self.real_photos:,} real photos; fakes made: {made or 'none'}"
            f" ({self.failed_attempts:,} attempts discarded: no face in a source, target or result);"
            f" {self.identities_without_fakes:,} identities got no fake; {self.identities_skipped:,} done by an earlier"
            f" run; {self.fakes_kept_from_input:,} fakes already in the input kept as fakes"
        )


class _Landmarks:
    """Landmarks per input photo, computed once and only for photos actually used."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}

    def get(self, rel: str) -> tuple[np.ndarray, np.ndarray] | None:
        if rel not in self._cache:
            try:
                rgb = read_rgb(self.root / rel)
            except ImageError:
                self._cache[rel] = None
            else:
                pts = landmarks68(rgb)
                self._cache[rel] = None if pts is None else (rgb, pts)
        return self._cache[rel]


def _pick_target(
    rng: np.random.Generator, source_pts: np.ndarray, reals: Sequence[Photo], own: range, marks: _Landmarks, tries: int
) -> tuple[Photo, np.ndarray, np.ndarray] | None:
    """Among `tries` random real photos of other people, the one whose face fits the source's best (shape_distance).

    `reals` is sorted by identity and `own` is the source identity's block in it; draws skip that block by shifting
    indices past it, so no per-identity list of everyone else is built.
    """
    best = None
    n_others = len(reals) - len(own)
    for i in rng.choice(n_others, size=min(tries, n_others), replace=False):
        photo = reals[int(i) + (len(own) if i >= own.start else 0)]
        got = marks.get(photo.rel)
        if got is None:
            continue
        d = shape_distance(source_pts, got[1])
        if best is None or d < best[0]:
            best = (d, photo, *got)
    return None if best is None else best[1:]


def _fake_of(kind: str, source: tuple[np.ndarray, np.ndarray], target: tuple, weight_a: float) -> np.ndarray | None:
    """One fake, or None when it cannot be made or dlib finds no face in the result."""
    try:
        if kind == "swap":
            fake = face_swap(source[0], source[1], target[1], target[2])
        else:
            fake = face_morph(source[0], source[1], target[1], target[2], weight_a)
    except ValueError:
        return None
    return fake if landmarks68(fake) is not None else None


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, "JPEG", quality=95), durable=False)


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a copy does the same job
        shutil.copy2(src, dst)


PROVENANCE_FIELDS = ("path", "kind", "identity", "source", "target", "weight_a")


def make_fakes(
    data: str | Path,
    out: str | Path,
    *,
    per_identity: int = 4,
    kinds: Sequence[str] = KINDS,
    weight_a: float = 0.65,
    candidates: int = 5,
    seed: int = 0,
    attempts: int = 3,
    progress: bool = True,
) -> FakesSummary:
    """Write OUT: every photo of DATA plus `per_identity` synthetic deepfakes of each identity, alternating `kinds`.

    Inputs: a dataset folder (identity folders, or the challenge layout); the output folder; how many fakes per
    identity; which kinds ("swap", "morph"); the morph's weight towards the impersonated identity; how many random
    other people's photos to try as the target (the best-fitting face is used); a seed; attempts per fake.
    Output: a FakesSummary. Identities finished by an earlier run (listed in OUT/fakes.csv with their files present)
    are skipped, so an interrupted run resumes; each identity's fakes come from its own seed, so skipping changes
    nothing else.

    Example:
        >>> make_fakes("lfw", "lfw_fakes", per_identity=2).fakes_made
        {'swap': 423, 'morph': 423}
    """
    data, out = Path(data), Path(out)
    kinds = tuple(kinds)
    bad = set(kinds) - set(KINDS)
    if bad or not kinds:
        raise UserError(f"unknown fake kind(s) {', '.join(sorted(bad)) or '(none)'}: use {', '.join(KINDS)}")
    if per_identity < 1 or candidates < 1 or attempts < 1:
        raise UserError("per_identity, candidates and attempts must be at least 1")
    if not 0.5 <= weight_a <= 1.0:
        raise UserError(f"weight_a must be in [0.5, 1] so that a morph still looks like its identity, got {weight_a}")
    if out.resolve() == data.resolve() or out.resolve().is_relative_to(data.resolve()):
        raise UserError(f"{out}: the output must be outside the input dataset {data}")
    root, photos = read_dataset(data)
    reals = [p for p in photos if not p.is_fake]
    by_identity: dict[str, list[Photo]] = {}
    for p in reals:
        by_identity.setdefault(p.identity, []).append(p)
    names = sorted(by_identity)
    summary = FakesSummary(identities=len(names), real_photos=len(reals), fakes_made={k: 0 for k in kinds})
    if len(names) < 2:
        raise UserError(f"{data}: needs at least two identities with real photos (a fake of A is made on B's photo)")

    settings = {"per_identity": per_identity, "kinds": list(kinds), "weight_a": weight_a, "seed": seed}
    folder = OutputFolder.claim(out, COMMAND)
    _check_settings(folder, settings)

    images = out / "images"
    meta: dict[str, int] = {}
    keys = [f"{p.identity}/{Path(p.rel).name}" for p in photos]
    planned = [f"{name}/fake_{kinds[k % len(kinds)]}_{k:02d}.jpg" for name in names for k in range(per_identity)]
    folder.add(*(f"images/{key}" for key in [*keys, *planned]), "fakes.csv", "meta.json")  # listed before written
    for p, key in zip(photos, keys):
        if key in meta:
            raise UserError(f"{data}: two photos of {p.identity} are both named {Path(p.rel).name}")
        _link_or_copy(root / p.rel, images / key)
        meta[key] = int(p.is_fake)
        summary.fakes_kept_from_input += int(p.is_fake)

    provenance_file = out / "fakes.csv"
    done: dict[str, list[dict]] = {}
    if provenance_file.exists():
        with open(provenance_file, newline="") as f:
            for row in csv.DictReader(f):
                done.setdefault(row["identity"], []).append(row)
    finished = {n for n, rows in done.items() if all((images / r["path"]).exists() for r in rows)}
    marks = _Landmarks(root)
    reals.sort(key=lambda p: (p.identity, p.rel))
    blocks, start = {}, 0
    for name in names:
        blocks[name] = range(start, start + len(by_identity[name]))
        start += len(by_identity[name])
    with open(provenance_file, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PROVENANCE_FIELDS)
        writer.writeheader()
        writer.writerows(r for n in sorted(finished) for r in done[n])
        for index, name in enumerate(tqdm(names, desc="synthetic fakes", unit="identity", disable=not progress)):
            if name in finished:
                summary.identities_skipped += 1
                continue
            # Each identity draws from its own seed, so skipping finished ones changes nothing for the others.
            rng = np.random.default_rng([seed, index])
            own = [reals[i] for i in blocks[name]]
            sources = [own[i] for i in rng.permutation(len(own))]
            rows = []
            for k in range(per_identity):
                kind = kinds[k % len(kinds)]
                for attempt in range(attempts):
                    source = sources[(k * attempts + attempt) % len(sources)]
                    got = marks.get(source.rel)
                    target = None if got is None else _pick_target(rng, got[1], reals, blocks[name], marks, candidates)
                    fake = None if target is None else _fake_of(kind, got, target, weight_a)
                    if fake is None:
                        summary.failed_attempts += 1
                        continue
                    rel = f"{name}/fake_{kind}_{k:02d}.jpg"
                    if rel in meta:
                        raise UserError(f"{data}: a photo is already named {rel}; rename it to make room for the fakes")
                    _write_jpeg(images / rel, fake)
                    weight = weight_a if kind == "morph" else ""
                    rows.append(dict(zip(PROVENANCE_FIELDS, (rel, kind, name, source.rel, target[0].rel, weight))))
                    summary.fakes_made[kind] += 1
                    break
            # An identity's rows are written only once all its fakes exist, so "listed" means "finished".
            writer.writerows(rows)
            f.flush()
            summary.identities_without_fakes += not rows
    with open(provenance_file, newline="") as f:
        for row in csv.DictReader(f):
            meta[row["path"]] = 1
    write_json(out / "meta.json", meta, sort_keys=True)
    folder.delete(*(f"images/{rel}" for rel in planned if rel not in meta))  # fakes no attempt could make
    return summary


def _check_settings(folder: OutputFolder, settings: dict) -> None:
    """An OUT made with other settings cannot be resumed: its finished identities would not match the new ones."""
    path = folder.path("fakes_settings.json")
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            before = None
        if before != settings:
            raise UserError(f"{path.parent}: made earlier with other settings ({before}); choose another --out")
    else:
        folder.write("fakes_settings.json", json.dumps(settings, sort_keys=True) + "\n")


def read_dataset(data: Path) -> tuple[Path, list[Photo]]:
    """(root the paths are relative to, every photo of DATA with its identity and real/fake label as stated).

    Reads the layout exactly as ingest does (labels.layouts: identity folders, or images/ + meta.json), so paths that
    would leave the dataset are refused there; refused entries are left out with a warning.
    """
    layout = read_layout(data)
    if layout.refused:
        print(f"warning: {len(layout.refused)} entries of {data} left out, e.g. {layout.refused[0]}", file=sys.stderr)
    return layout.root, [Photo(e.identity, e.path, e.is_fake) for e in layout.entries]
