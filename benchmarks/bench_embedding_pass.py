"""Is the embedding pass bound by the model? Images/s of (a) the full pass vs (b) the bare model, on the same photos.

(a) `embeddings.pipeline.embed_images` on a fresh cache: hashing, decoding in DataLoader workers, detection +
    alignment, crop PNGs, batching, the model, the embedding cache; images/s = crops embedded / wall time (models are
    loaded before the clock starts; worker start-up is included, so use enough photos that it is amortised).
(b) the model alone on inputs made beforehand from the same crops: for the IR backbones (random weights: speed does
    not depend on them) the torch forward on pre-made tensors; for dlib and ONNX, `Embedder.embed` on pre-loaded crops
    (their input conversion is a small part of their cost).
The ratio a/b is the share of the model's speed the pass delivers: the goal is >= 0.9 for the IR models. On a machine
with few cores, detection competes with the model for them (photos that are already aligned, `--aligned`, need only
decoding); on a GPU the workers only have to keep up with the GPU. Run on an idle machine.

    python benchmarks/bench_embedding_pass.py                           # the figures to report (1000 LFW photos)
    python benchmarks/bench_embedding_pass.py --data ../shared/faces/glint24 --aligned       # decoding only
    python benchmarks/bench_embedding_pass.py --photos 24 --embedders ir_18 onnx --batch 8   # smoke run
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from embeddings import build_backbone, load_backbone, save_backbone  # noqa: E402
from embeddings.backbones import ARCHS  # noqa: E402
from embeddings.cache import read_crop  # noqa: E402
from embeddings.device import autocast, pick_device  # noqa: E402
from embeddings.embedders import Embedder, make_embedder  # noqa: E402
from embeddings.options import EmbedOptions  # noqa: E402
from embeddings.pipeline import crop_path, embed_images, get_detector  # noqa: E402
from embeddings.preprocess import to_input  # noqa: E402
from labels.imagefile import is_image_name  # noqa: E402

SHARED = REPO.parent / "shared"


def build(name: str, folder: Path, device: torch.device, onnx_path: Path) -> tuple[Embedder, Callable | None]:
    """The embedder for the pass, and for IR backbones a function running the bare model on a pre-made tensor."""
    if name not in ARCHS:
        spec = "dlib" if name == "dlib" else f"onnx:{onnx_path}"
        return make_embedder(spec, device=device), None
    torch.manual_seed(0)
    path = save_backbone(build_backbone(name), folder / f"{name}.pt")
    model = load_backbone(path).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    def bare(x: torch.Tensor) -> None:
        with torch.inference_mode(), autocast(device):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return make_embedder(f"ir:{name}:{path}", device=device), bare


def model_speed(embedder: Embedder, bare: Callable | None, crops: np.ndarray, batch: int, device) -> float:
    """(b): images/s of the model alone over all crops, inputs made before the clock starts."""
    chunks = [crops[i : i + batch] for i in range(0, len(crops), batch)]
    if bare is not None:
        inputs = [to_input(c, "adaface").to(device) for c in chunks]
        if device.type == "cuda":
            inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
        run = bare
    else:
        inputs, run = chunks, embedder.embed
    run(inputs[0])  # warm-up
    start = time.perf_counter()
    for x in inputs:
        run(x)
    return len(crops) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=SHARED / "faces" / "lfw", help="folder of photos (searched deep)")
    parser.add_argument("--photos", type=int, default=1000, help="how many photos (default 1000)")
    parser.add_argument("--aligned", action="store_true", help="the photos are 112x112 template crops already")
    parser.add_argument("--detector", default="dlib", help="dlib or scrfd:<file.onnx> (default dlib)")
    parser.add_argument("--embedders", nargs="+", default=["ir_18", "ir_101", "dlib", "onnx"],
                        choices=[*ARCHS, "dlib", "onnx"], help="what to measure (default ir_18 ir_101 dlib onnx)")
    parser.add_argument("--onnx", type=Path, default=SHARED / "models" / "mobilefacenet.onnx",
                        help="ONNX embedder for 'onnx' (default ../shared/models/mobilefacenet.onnx)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda (default auto)")
    parser.add_argument("--progress", action="store_true", help="show the pass's progress bars")
    args = parser.parse_args(argv)

    if not args.data.is_dir():
        parser.error(f"{args.data}: no such folder (pass --data)")
    if "onnx" in args.embedders and not args.onnx.is_file():
        parser.error(f"{args.onnx}: ONNX model not found (pass --onnx)")
    paths = sorted(p for p in args.data.rglob("*") if p.is_file() and is_image_name(p.name))[: args.photos]
    if not paths:
        parser.error(f"{args.data}: no photos found")
    device = pick_device(args.device)
    print(f"{len(paths)} photos from {args.data} ({'pre-aligned' if args.aligned else args.detector}), batch "
          f"{args.batch}, {args.workers} workers, {device}, torch threads {torch.get_num_threads()}")
    print(f"{'embedder':<10} {'photos':>6} {'ok':>6} {'(a) pass img/s':>15} {'(b) model img/s':>16} {'a/b':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.embedders:
            embedder, bare = build(name, Path(tmp), device, args.onnx)
            embedder.embed(np.zeros((min(args.batch, 8), 112, 112, 3), np.uint8))  # warm-up outside the clock
            if not args.aligned:
                get_detector(args.detector)  # loading models is not part of the pass's speed (once per process)
            cache = Path(tmp) / f"cache-{name}"
            start = time.perf_counter()
            result = embed_images(paths, embedder, cache_dir=cache,
                                  options=EmbedOptions(detector=args.detector, aligned=args.aligned, batch_size=args.batch,
                                                       workers=args.workers, progress=args.progress))
            seconds = time.perf_counter() - start
            ok = [k for k, s in zip(result.keys, result.status) if s == "ok"]
            if not ok:
                print(f"{name:<10} no face found in any photo: {result.summary()}")
                continue
            crops = np.stack([read_crop(crop_path(cache, result.align_id, k)) for k in ok])
            a = result.embedded_now / seconds
            b = model_speed(embedder, bare, crops, args.batch, device)
            print(f"{name:<10} {len(paths):>6} {len(ok):>6} {a:>15.1f} {b:>16.1f} {a / b:>6.2f}", flush=True)
    print("goal: a/b >= 0.9 for the IR models (the pass bound by the model, not by decoding and alignment)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
