"""Face embedders behind one interface: aligned crops in, unit embeddings and their norms out.

Why one interface: the embedding pass, cleaning, evaluation and the benchmarks must not care whether the vectors come
from an IR backbone in torch, any ArcFace-style ONNX model, or dlib's pretrained ResNet (the offline default, so a user
with no checkpoint still gets real results). Each embedder has an `id` (name + weights hash, + "-flip" with flip fusion)
that the embedding cache is keyed by, with the alignment's id: new weights or another alignment never reuse old vectors.

Specs (`make_embedder(spec)`):
    dlib                      dlib_face_recognition_resnet_model_v1 from the face-recognition-models package, 128-d
    ir:<arch>:<checkpoint>    an IR backbone (ir_18|ir_34|ir_50|ir_101) from an AdaFace / CVLFace / own checkpoint,
                              512-d; `ir:<checkpoint>` reads the depth from the file
    onnx:<file.onnx>          any ArcFace-style embedder [N,3,112,112] -> [N,D]; the input convention is read from the
                              model's metadata (`embeddings.preprocess.ONNX_CONVENTION_KEY`, written by
                              `curation.export_onnx`), default "arcface_rgb" (insightface models, MobileFaceNet)

Each declares the crop it takes (`Embedder.geometry`): the ArcFace 112x112 template for IR and ONNX models, dlib's own
150x150 chip for dlib, so that the pass warps every photo once, straight to what the model was trained on.

Example:
    >>> embedder = make_embedder("ir:ir_101:adaface_ir101_webface12m.ckpt", device="auto", flip=True)
    >>> unit, norm = embedder.embed(crops)       # crops: uint8 [N, 112, 112, 3] RGB -> float32 [N, 512], [N]
    >>> embedder.id                              # 'ir_101-3f2a9c0d1b7e-flip'
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embeddings.align import ARCFACE, CROP_SIZE, DLIB_CHIP, CropGeometry
from embeddings.backbones import ARCHS, EMBEDDING_SIZE, Backbone
from embeddings.checkpoints import load_backbone
from embeddings.detectors import dlib_model_path
from embeddings.device import autocast, pick_device
from embeddings.ortsession import ort_session
from embeddings.preprocess import ConventionError, onnx_convention, to_input
from labels.cli import UserError
from labels.files import file_sha256

Crops = np.ndarray | torch.Tensor

MIN_DIM = 16  # fewer numbers per face than this is not an embedder (e.g. a detector's score output)
DLIB_CHIP_VERSION = 2  # bump when the dlib embedder's input changes (2: chips warped from the photo): part of its id


class EmbedderError(UserError):
    """An embedder that cannot be built (bad spec, missing or unusable model file): a user error, not a bug."""


@dataclass
class Embedder:
    """A face embedder. Build with `make_embedder(spec)` (or `torch_embedder(model, ...)` for a model in memory).

    id: cache key (name + weights hash [+ "-flip"]). dim: embedding size. device: where the model runs (the pass pins
    memory when it is CUDA). forward: crops -> raw (unnormalised) float32 [N, dim]. flip: fuse crops with their mirror.
    spec: what `make_embedder` was given ("" for a model in memory), so that another process (a Ray actor) can build
    the same embedder. geometry: the crop the model takes (`embeddings.align.CropGeometry`: the ArcFace 112x112
    template, or dlib's 150x150 chip); the pass warps each photo straight to it. per_process: one call uses one core
    (dlib), so the pass runs a copy in each of its worker processes, one per core; the others keep their intra-op
    threads (or their GPU) in the main process.
    """

    id: str
    dim: int
    forward: Callable[[Crops], np.ndarray]
    device: torch.device = torch.device("cpu")
    flip: bool = False
    spec: str = ""
    per_process: bool = False
    geometry: CropGeometry = ARCFACE

    def embed(self, crops: Crops) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB crops [N, size, size, 3] in this embedder's geometry (112, dlib 150) (numpy, or a torch tensor
        such as a pinned DataLoader batch) -> (L2-normalised float32 [N, dim], pre-normalisation norm float32 [N]).

        With flip, the raw vectors of the crop and its mirror are averaged before normalising (the norm is that of the
        average, so it stays on the scale of a single pass; see `embeddings.backbones.flip_fused_embedding`).
        """
        size = self.geometry.size
        if tuple(crops.shape[1:]) != (size, size, 3) or crops.dtype not in (np.uint8, torch.uint8):
            got = f"{crops.dtype} {tuple(crops.shape)}"
            raise ValueError(f"expected uint8 crops [N, {size}, {size}, 3] ({self.geometry.name}), got {got}")
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.float32)
        raw = self.forward(crops)
        if self.flip:
            mirrored = crops.flip(2) if isinstance(crops, torch.Tensor) else np.ascontiguousarray(crops[:, :, ::-1])
            raw = (raw + self.forward(mirrored)) / 2
        norm = np.linalg.norm(raw, axis=1)
        unit = raw / np.maximum(norm, 1e-12)[:, None]
        return unit.astype(np.float32), norm.astype(np.float32)


def _name_safe(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", text)[:40]


def _existing_file(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise EmbedderError(f"{path}: {what} not found")
    if not path.is_file():
        raise EmbedderError(f"{path}: is a folder, not a {what}")
    return path


# --------------------------------------------------------------------------------------------------------------- torch


def torch_embedder(
    model: torch.nn.Module, name: str, *, device: torch.device | str = "cpu", flip: bool = False,
    convention: str = "adaface",
) -> Embedder:
    """An embedder over a model in memory whose forward returns (unit [N, D], norm [N, 1]) like AdaFace's.

    `name` must identify the weights (it becomes the cache id): make_embedder uses "<arch>-<file hash>"; training code
    embedding with its current weights must pass a name that changes with them. The model is moved to `device`, put in
    eval mode and, on CUDA, in channels_last layout; inference runs under `torch.inference_mode` and, on CUDA, autocast.
    """
    device = pick_device(device) if isinstance(device, str) else device
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    def forward(crops: Crops) -> np.ndarray:
        x = torch.as_tensor(crops)
        if device.type == "cuda":  # uint8 crosses the bus (4x less than float32), from pinned memory without a sync
            x = x.to(device, non_blocking=True)
        with torch.inference_mode(), autocast(device):
            x = to_input(x, convention)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            unit, norm = model(x)
        return (unit.float() * norm.float()).cpu().numpy()

    if isinstance(model, Backbone):
        dim = EMBEDDING_SIZE
    else:
        dim = forward(np.zeros((1, CROP_SIZE, CROP_SIZE, 3), np.uint8)).shape[1]
    return Embedder(id=name + ("-flip" if flip else ""), dim=dim, forward=forward, device=device, flip=flip)


def _ir_embedder(spec: ModelSpec, device: torch.device, flip: bool) -> Embedder:
    path = _existing_file(spec.path, "checkpoint file")
    model = load_backbone(path, arch=spec.arch)  # CheckpointError (a ValueError) names the file and the problem
    return torch_embedder(model, f"{model.arch}-{file_sha256(path)[:12]}", device=device, flip=flip)


# ---------------------------------------------------------------------------------------------------------------- ONNX


def _onnx_embedder(path: Path, device: torch.device, flip: bool) -> Embedder:
    path = _existing_file(path, "ONNX model file")
    try:
        session = ort_session(path, device=str(device))
    except ValueError as exc:
        raise EmbedderError(str(exc)) from exc
    inp = session.get_inputs()[0]
    shape = list(inp.shape)
    fixed = [d if isinstance(d, int) else None for d in shape]
    if len(shape) != 4 or fixed[1:] not in ([3, CROP_SIZE, CROP_SIZE], [3, None, None]):
        raise EmbedderError(
            f"{path}: input {inp.name!r} is shaped {shape}; an ArcFace-style embedder takes [N, 3, 112, 112]"
        )
    try:
        convention = onnx_convention(session.get_modelmeta().custom_metadata_map, str(path))
    except ConventionError as exc:
        raise EmbedderError(str(exc)) from None
    batch = fixed[0]  # some exports hard-wire the batch size (MobileFaceNet: 1): then feed it that many at a time
    output = session.get_outputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        out = np.asarray(session.run([output], {inp.name: x})[0], np.float32)
        if out.ndim != 2 or out.shape[0] != len(x):
            raise EmbedderError(
                f"{path}: output {output!r} is shaped {list(out.shape)} for {len(x)} crops; expected [N, D] embeddings"
            )
        return out

    def forward(crops: Crops) -> np.ndarray:
        x = to_input(crops, convention).numpy()
        if batch is None:
            return run(x)
        parts = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            parts.append(run(padded)[: len(chunk)])
        return np.concatenate(parts)

    try:  # one probe run: learns the output size and turns a model that cannot run into a clear error now
        probe = forward(np.zeros((1, CROP_SIZE, CROP_SIZE, 3), np.uint8))
    except EmbedderError:
        raise
    except Exception as exc:  # onnxruntime raises untyped errors
        reason = str(exc).splitlines()[0][:200]
        raise EmbedderError(f"{path}: the model does not run on a 112x112 crop ({reason})") from exc
    if probe.shape[1] < MIN_DIM:
        raise EmbedderError(f"{path}: gives {probe.shape[1]} numbers per crop; not a face embedder (>= {MIN_DIM})")
    name = f"onnx-{_name_safe(path.stem)}-{file_sha256(path)[:12]}"
    return Embedder(id=name + ("-flip" if flip else ""), dim=probe.shape[1], forward=forward, device=device, flip=flip)


# ---------------------------------------------------------------------------------------------------------------- dlib


def _dlib_embedder(flip: bool) -> Embedder:
    import dlib

    path = dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")
    model = dlib.face_recognition_model_v1(str(path))

    def forward(chips: Crops) -> np.ndarray:
        chips = chips.numpy() if isinstance(chips, torch.Tensor) else chips
        chips = [np.ascontiguousarray(c) for c in chips]
        return np.array(model.compute_face_descriptor(chips), dtype=np.float32).reshape(len(chips), -1)

    name = f"dlib-resnet-{file_sha256(path)[:12]}-chip{DLIB_CHIP_VERSION}"
    return Embedder(id=name + ("-flip" if flip else ""), dim=128, forward=forward, flip=flip, per_process=True,
                    geometry=DLIB_CHIP)


@dataclass(frozen=True)
class ModelSpec:
    """A model spec, parsed: `kind` dlib | ir | onnx; `path` the model file (None for dlib); `arch` the IR depth
    the spec insists on (None: read from the checkpoint)."""

    kind: str
    path: Path | None = None
    arch: str | None = None


SPEC_FORMS = "dlib, ir:<arch>:<checkpoint> or onnx:<file.onnx>"


def parse_spec(spec: str) -> ModelSpec:
    """Split a model spec ("dlib", "ir:<arch>:<checkpoint>", "ir:<checkpoint>", "onnx:<file>") into its parts.

    The one parser of the syntax: `make_embedder` (--model of clean, evaluate, predict) and fine-tuning's `--init`
    read specs through it, so a file that works as `--model onnx:FILE` works as `--init onnx:FILE`. Nothing is read
    from disk here. Raises EmbedderError for a spec of no known form.

    Example:
        >>> parse_spec("ir:ir_50:model.pt")
        ModelSpec(kind='ir', path=PosixPath('model.pt'), arch='ir_50')
    """
    kind, _, rest = spec.partition(":")
    if spec == "dlib":
        return ModelSpec("dlib")
    if kind == "ir" and rest:
        arch, sep, path = rest.partition(":")
        if not (sep and arch in ARCHS):  # "ir:<checkpoint>": depth read from the file
            arch, path = None, rest
        return ModelSpec("ir", Path(path).expanduser(), arch)
    if kind == "onnx" and rest:
        return ModelSpec("onnx", Path(rest).expanduser())
    raise EmbedderError(f"unknown embedder {spec!r}: use {SPEC_FORMS}")


def make_embedder(spec: str, device: str | torch.device = "auto", flip: bool = False) -> Embedder:
    """Build the embedder a spec names (see the module docstring): "dlib", "ir:<arch>:<checkpoint>", "onnx:<file>".

    device: auto|cpu|cuda[:N] (dlib always runs on the CPU). flip: fuse each crop with its mirror image.
    Raises EmbedderError / CheckpointError (both ValueError) naming the file and the problem.

    Example:
        >>> make_embedder("onnx:models/mobilefacenet.onnx").dim
        128
    """
    parsed = parse_spec(spec)
    device = pick_device(device) if isinstance(device, str) else device
    if parsed.kind == "dlib":
        embedder = _dlib_embedder(flip)
    elif parsed.kind == "ir":
        embedder = _ir_embedder(parsed, device, flip)
    else:
        embedder = _onnx_embedder(parsed.path, device, flip)
    embedder.spec = spec
    return embedder
