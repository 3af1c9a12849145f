"""An IR backbone -> an ONNX model, checked against torch before you ship it (`python -m curation.export_onnx`).

Why: serving (and the challenge's reference solution) runs ONNX; a silent export bug or a wrong input convention costs
accuracy nobody notices. So the command exports, writes the input convention into the model's metadata (the `onnx:`
embedder reads it and feeds the model correctly without being told), and then compares onnxruntime with torch on real
aligned crops (or synthetic ones) at two batch sizes.

The exported model:
    input    'input'     float32 [N, 3, 112, 112], the backbone's own convention: BGR, ((x / 255) - 0.5) / 0.5
    output   'features'  float32 [N, 512], the RAW embedding (before L2 normalisation, what CVLFace's forward and
                         insightface's ONNX models give). Normalise it before taking cosines; its norm is AdaFace's
                         image-quality signal, which a unit output would throw away.
    metadata_props       embeddings.preprocess.ONNX_CONVENTION_KEY = "adaface", plus arch, features = "raw",
                         source checkpoint name
    N is dynamic.

Example:
    python -m curation.export_onnx adaface_ir101_webface12m.ckpt --out ir101.onnx --check-images crops/
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embeddings.backbones import EMBEDDING_SIZE, INPUT_SIZE, Backbone, split_norm
from embeddings.ortsession import ort_session
from embeddings.preprocess import CONVENTIONS, ONNX_CONVENTION_KEY, to_input
from labels.cli import UserError
from labels.files import atomic_write
from labels.imagefile import IMAGE_SUFFIXES, ImageError, read_rgb

DEFAULT_OPSET = 17
OPSETS = range(7, 21)  # what torch 2.13's TorchScript-based exporter supports
PARITY_GOAL = 1e-4


@dataclass(frozen=True)
class Parity:
    """How far onnxruntime is from torch on the same crops: max |difference| of the unit embeddings."""

    max_abs_diff: float
    n_images: int
    batch_sizes: tuple[int, ...]


class _RawFeatures(nn.Module):
    """What the ONNX graph computes: the backbone's raw embedding (see module doc for why raw)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.raw_embedding(x)


def export_onnx(
    model: Backbone, out: str | Path, opset: int = DEFAULT_OPSET, convention: str = "adaface", source: str = ""
) -> Path:
    """Write `model` as ONNX to `out` (atomically: a temporary file beside it, then a rename).

    Inputs: an IR `Backbone` (any device; exported from a float32 CPU copy in eval mode), the ONNX opset, the input
    convention the weights expect (a key of `embeddings.preprocess.CONVENTIONS`, recorded in the metadata) and the
    checkpoint name to record. Output: the path written. Uses torch's TorchScript-based exporter (`dynamo=False`):
    torch 2.13's default dynamo exporter needs the `onnxscript` package, and this one handles these plain conv nets
    exactly with what is installed.

    Example:
        >>> export_onnx(load_backbone("best.pt"), "best.onnx")
    """
    import onnx

    if convention not in CONVENTIONS:
        raise UserError(f"unknown input convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # .eval(): torch's exporter restores the mode of the module it is given, recursively; a fresh (training-mode)
    # wrapper would leave the caller's model in training mode afterwards.
    wrapper = _RawFeatures(_cpu_fp32_eval(model)).eval()
    dummy = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy-exporter notice; it is chosen on purpose
            torch.onnx.export(
                wrapper, (dummy,), tmp, dynamo=False, opset_version=opset, do_constant_folding=True,
                input_names=["input"], output_names=["features"],
                dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
            )
        proto = onnx.load(tmp)
        meta = {
            ONNX_CONVENTION_KEY: convention,
            "embedding_arch": getattr(model, "arch", ""),
            "features": "raw",
            "source_checkpoint": source,
        }
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(value)
        proto.doc_string = (
            f"{meta['embedding_arch']} face embedder. input [N,3,{INPUT_SIZE},{INPUT_SIZE}] in convention "
            f"'{convention}'; output 'features' [N,{EMBEDDING_SIZE}] raw (L2-normalise before cosine)."
        )
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
    return atomic_write(out, write)


def check_parity(model: Backbone, onnx_path: str | Path, crops: np.ndarray, convention: str = "adaface") -> Parity:
    """Compare onnxruntime with torch on `crops` (RGB uint8 [N, 112, 112, 3]): whole batch, then the first crop alone.

    Output: `Parity` with the max absolute difference of the L2-normalised embeddings over both runs (float32 on the
    CPU typically ~1e-6; the goal is < 1e-4). Running two batch sizes also proves the batch axis is dynamic.

    Example:
        >>> check_parity(model, "best.onnx", crops).max_abs_diff < 1e-4
        True
    """
    x = to_input(crops, convention)
    reference = _cpu_fp32_eval(model)
    with torch.inference_mode():
        expected, _ = reference(x)
    session = ort_session(onnx_path)
    diff = 0.0
    batch_sizes = (len(x), 1) if len(x) > 1 else (1,)
    for n in batch_sizes:
        (features,) = session.run(["features"], {"input": x[:n].numpy()})
        got, _ = split_norm(torch.from_numpy(features))
        diff = max(diff, float((got - expected[:n]).abs().max()))
    return Parity(diff, len(x), batch_sizes)


def read_check_crops(folder: str | Path, limit: int) -> tuple[np.ndarray, list[str]]:
    """Up to `limit` aligned 112x112 crops from `folder` (recursive, sorted) and the reasons others were skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: --check-images must be a folder of aligned 112x112 crops")
    crops, skipped = [], []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        if len(crops) == limit or len(skipped) == 50:  # enough to check, or clearly the wrong folder
            break
        try:
            rgb = read_rgb(path)
        except ImageError as exc:
            skipped.append(str(exc))
            continue
        if rgb.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            skipped.append(f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, not an aligned {INPUT_SIZE}x{INPUT_SIZE} crop")
            continue
        crops.append(rgb)
    if not crops:
        raise UserError(f"{folder}: no aligned {INPUT_SIZE}x{INPUT_SIZE} crops found" +
                         (f" ({len(skipped)} files skipped, e.g. {skipped[0]})" if skipped else ""))
    return np.stack(crops), skipped


def synthetic_crops(n: int, seed: int = 0) -> np.ndarray:
    """Random RGB uint8 crops: enough to check the arithmetic when no real crops are at hand."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)


def _cpu_fp32_eval(model: Backbone) -> Backbone:
    """The model itself when it is already a float32 CPU model in eval mode, else an eval-mode float32 CPU copy.

    A copy rather than a change in place: the caller's model (perhaps mid-training on a GPU) is left as it was.
    """
    p = next(model.parameters())
    if p.device.type == "cpu" and p.dtype == torch.float32 and not model.training:
        return model
    return copy.deepcopy(model).to("cpu", torch.float32).eval()
