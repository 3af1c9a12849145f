"""`python -m curation.export_onnx`: an IR checkpoint -> an ONNX model, checked against torch before you ship it.

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

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embeddings import CheckpointError, load_backbone
from embeddings.backbones import ARCHS, EMBEDDING_SIZE, INPUT_SIZE, Backbone, split_norm
from embeddings.ortsession import ort_session
from embeddings.preprocess import CONVENTIONS, ONNX_CONVENTION_KEY, to_input
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
        raise ValueError(f"unknown input convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # .eval(): torch's exporter restores the mode of the module it is given, recursively; a fresh (training-mode)
    # wrapper would leave the caller's model in training mode afterwards.
    wrapper = _RawFeatures(_cpu_fp32_eval(model)).eval()
    dummy = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
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
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


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
        raise ValueError(f"{folder}: --check-images must be a folder of aligned 112x112 crops")
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
        raise ValueError(f"{folder}: no aligned {INPUT_SIZE}x{INPUT_SIZE} crops found" +
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


EPILOG = """examples:
  python -m curation.export_onnx adaface_ir101_webface12m.ckpt --out ir101.onnx
  python -m curation.export_onnx RUN/best.pt --out best.onnx --check-images WORK/cache/crops/<align_id>
  python -m curation.export_onnx model.safetensors --arch ir_50 --out ir50.onnx --opset 18

then any command that takes an embedder runs it as  --model onnx:ir101.onnx

exit codes: 0 exported and parity within --tolerance; 1 exported but parity above it; 2 bad input
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m curation.export_onnx",
        description="Export an IR backbone checkpoint (AdaFace .ckpt, CVLFace model.pt / model.safetensors, a "
        "state_dict, or a train_on_clean run's .pt) to ONNX with a dynamic batch axis, then check onnxruntime "
        "against torch. Output 'features' is the raw 512-d embedding: L2-normalise it before cosine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="the backbone checkpoint to export")
    parser.add_argument("--out", type=Path, required=True, metavar="MODEL.onnx", help="the .onnx file to write")
    parser.add_argument("--arch", choices=ARCHS, help="insist on this depth (default: read it from the checkpoint)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                        help=f"ONNX opset, {OPSETS.start}-{OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    parser.add_argument("--check-images", type=Path, metavar="DIR",
                        help="aligned 112x112 crops for the parity check (default: synthetic crops)")
    parser.add_argument("--max-images", type=int, default=16, metavar="N",
                        help="crops used by the parity check (default 16)")
    parser.add_argument("--tolerance", type=float, default=PARITY_GOAL, metavar="TOL",
                        help=f"largest acceptable difference of normalised embeddings (default {PARITY_GOAL:g})")
    args = parser.parse_args(argv)
    if args.max_images < 1:
        parser.error("--max-images must be at least 1")
    if args.opset not in OPSETS:
        parser.error(f"--opset {args.opset}: the exporter supports opsets {OPSETS.start} to {OPSETS.stop - 1}")

    started = time.perf_counter()
    try:
        if args.check_images is not None:
            crops, skipped = read_check_crops(args.check_images, args.max_images)
            crops_from = f"{len(crops)} crops from {args.check_images}"
        else:
            crops, skipped = synthetic_crops(min(args.max_images, 8)), []
            crops_from = f"{len(crops)} synthetic crops (pass --check-images DIR for real ones)"
        print(f"[1/3] loading {args.checkpoint} ...", flush=True)
        model = load_backbone(args.checkpoint, arch=args.arch)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[2/3] exporting {model.arch} to {args.out} (opset {args.opset}) ...", flush=True)
    try:
        export_onnx(model, args.out, opset=args.opset, source=args.checkpoint.name)
    except OSError as exc:
        print(f"error: {args.out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(f"[3/3] checking onnxruntime against torch on {crops_from} ...", flush=True)
    for reason in skipped:
        print(f"  skipped {reason}")
    parity = check_parity(model, args.out, crops)
    ok = parity.max_abs_diff < args.tolerance
    size_mb = args.out.stat().st_size / 1e6
    print(
        f"\nwrote {args.out} ({size_mb:.1f} MB) in {time.perf_counter() - started:.1f} s\n"
        f"  model     {model.arch}, opset {args.opset}, from {args.checkpoint.name}\n"
        f"  input     'input' float32 [N,3,{INPUT_SIZE},{INPUT_SIZE}], BGR, ((x/255)-0.5)/0.5 "
        f"(metadata {ONNX_CONVENTION_KEY}=adaface)\n"
        f"  output    'features' float32 [N,{EMBEDDING_SIZE}], raw embedding: L2-normalise before cosine\n"
        f"  parity    max |torch - onnxruntime| of normalised embeddings = {parity.max_abs_diff:.2e} over "
        f"{parity.n_images} crops, batch sizes {', '.join(map(str, parity.batch_sizes))} "
        f"({'within' if ok else 'ABOVE'} the {args.tolerance:g} tolerance)"
    )
    if not ok:
        print(f"error: parity check failed: {args.out} was written but differs from torch by "
              f"{parity.max_abs_diff:.2e}; try another --opset or report the checkpoint", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
