"""`python -m curation.export_onnx CHECKPOINT --out MODEL.onnx`: export an IR backbone to ONNX and check onnxruntime
against torch (the export itself is `embeddings.onnx_export`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from embeddings import load_backbone
from embeddings.backbones import ARCHS, EMBEDDING_SIZE, INPUT_SIZE
from embeddings.onnx_export import (
    DEFAULT_OPSET, OPSETS, PARITY_GOAL, check_parity, export_onnx, read_check_crops, synthetic_crops,
)
from embeddings.preprocess import ONNX_CONVENTION_KEY
from labels.cli import command_parser, run_cli

EPILOG = """examples:
  python -m curation.export_onnx adaface_ir101_webface12m.ckpt --out ir101.onnx
  python -m curation.export_onnx RUN/best.pt --out best.onnx --check-images WORK/cache/crops/<align_id>
  python -m curation.export_onnx model.safetensors --arch ir_50 --out ir50.onnx --opset 18

then any command that takes an embedder runs it as  --model onnx:ir101.onnx

exit codes: 0 exported and parity within --tolerance; 1 exported but parity above it; 2 bad input
"""


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "python -m curation.export_onnx",
        "Export an IR backbone checkpoint (AdaFace .ckpt, CVLFace model.pt / model.safetensors, a "
        "state_dict, or a train_on_clean run's .pt) to ONNX with a dynamic batch axis, then check onnxruntime "
        "against torch. Output 'features' is the raw 512-d embedding: L2-normalise it before cosine.",
        EPILOG,
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

    return run_cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.check_images is not None:
        crops, skipped = read_check_crops(args.check_images, args.max_images)
        crops_from = f"{len(crops)} crops from {args.check_images}"
    else:
        crops, skipped = synthetic_crops(min(args.max_images, 8)), []
        crops_from = f"{len(crops)} synthetic crops (pass --check-images DIR for real ones)"
    print(f"[1/3] loading {args.checkpoint} ...", flush=True)
    model = load_backbone(args.checkpoint, arch=args.arch)
    print(f"[2/3] exporting {model.arch} to {args.out} (opset {args.opset}) ...", flush=True)
    export_onnx(model, args.out, opset=args.opset, source=args.checkpoint.name)
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
