"""Fine-tuning speed: optimizer steps per second of the pair objective at batch 32 (64 crops per step), per backbone.

Runs `curation.training.loop.train_step` (to_input, forward of both sides of every pair, adaptive-margin loss, backward,
AdamW) on random uint8 crops (the arithmetic does not depend on the pixels; decoding is measured by the real runs'
progress bar), after warm-up steps. Prints steps/s and images/s; the figure to report is the median step.

    python benchmarks/bench_train.py                              # ir_18 and ir_101, batch 32, on the CPU
    python benchmarks/bench_train.py --archs ir_101 --device cuda --steps 50
    python benchmarks/bench_train.py --archs ir_18 --batch 8 --steps 2 --warmup 1     # a quick check
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.training.config import resolve_config  # noqa: E402
from curation.training.loop import train_step  # noqa: E402
from embeddings import build_backbone  # noqa: E402
from embeddings.device import amp_dtype, pick_device  # noqa: E402
from embeddings.losses import AdaptiveMarginPairLoss  # noqa: E402


def measure(arch: str, batch: int, steps: int, warmup: int, device: torch.device) -> list[float]:
    cfg = resolve_config(cli_values={"batch_size": batch, "device": str(device)})
    dtype = amp_dtype(device, cfg.precision)
    torch.manual_seed(0)
    model = build_backbone(arch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    loss_fn = AdaptiveMarginPairLoss(cfg.margin_s, cfg.margin_base, cfg.margin_alpha)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + steps):
        a, b = (torch.randint(0, 256, (batch, 112, 112, 3), dtype=torch.uint8, generator=gen) for _ in range(2))
        label = (torch.arange(batch) % 2).float()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        train_step(model, None, loss_fn, (a, b, label, label.long()), opt, scaler, cfg, device, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="ir_18,ir_101", help="comma-separated backbones (default ir_18,ir_101)")
    ap.add_argument("--batch", type=int, default=32, help="pairs per step (default 32, the recipe)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per backbone (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    args = ap.parse_args()
    device = pick_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch} pairs"
          f" ({2 * args.batch} crops per step)")
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        times = measure(arch, args.batch, args.steps, args.warmup, device)
        med = statistics.median(times)
        print(f"{arch:7s} median step {med:8.2f} s  ->  {1 / med:7.3f} steps/s, {2 * args.batch / med:7.1f} images/s"
              f"  (min {min(times):.2f} s, max {max(times):.2f} s over {len(times)} steps)")


if __name__ == "__main__":
    main()
