"""Images/s of onnxruntime vs torch on this machine for exported IR backbones (random weights: speed does not depend
on them).

For each architecture: torch (eval, inference_mode, float32, the threads torch uses by default), then the exported
ONNX model under onnxruntime with its default session options and with the project's tuned session
(`embeddings.ortsession.ort_session`: all graph optimisations, one intra-op thread per usable core, sequential).
With `--explore`, also every graph optimisation level with 1 thread and with one per core, to see which options
matter on a given CPU. The fastest of `--repeat` timed runs of `--iters` batches each is reported, after one warm-up
batch; the runs of the different runtimes are interleaved, so that a change of load hits them all alike. The max
difference of normalised embeddings between torch and each session is printed beside, as a sanity check. Run it on
an idle machine: other processes on the same cores make the figures meaningless.

    python benchmarks/bench_onnx.py                          # the figures to report: ir_18 and ir_101, batch 32
    python benchmarks/bench_onnx.py --explore --archs ir_18  # which session options matter here
    python benchmarks/bench_onnx.py --archs ir_18 --batch 2 --iters 1 --repeat 1    # smoke run
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embeddings.onnx_export import export_onnx, synthetic_crops  # noqa: E402
from embeddings.backbones import ARCHS, build_backbone  # noqa: E402
from embeddings.options import usable_cores  # noqa: E402
from embeddings.ortsession import ort_session  # noqa: E402
from embeddings.preprocess import to_input  # noqa: E402


def images_per_second(runners: list, x: np.ndarray, iters: int, repeat: int) -> list[float]:
    """Best images/s of each runner; rounds are interleaved so that a load change on the machine hits all alike."""
    for run in runners:
        run(x)  # warm-up: allocations, oneDNN / onnxruntime kernel selection
    best = [float("inf")] * len(runners)
    for _ in range(repeat):
        for i, run in enumerate(runners):
            start = time.perf_counter()
            for _ in range(iters):
                run(x)
            best[i] = min(best[i], time.perf_counter() - start)
    return [iters * len(x) / b for b in best]


def sessions(path: Path, explore: bool) -> list[tuple[str, object]]:
    """(label, onnxruntime session) pairs: default options, the project's tuned session, and with --explore more."""
    import onnxruntime as ort

    found = [("default options", ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])),
             (f"ort_session: ENABLE_ALL, {usable_cores()} threads", ort_session(path))]
    if explore:
        for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
            for threads in sorted({1, usable_cores()}):
                opts = ort.SessionOptions()
                opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
                opts.intra_op_num_threads = threads
                session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                found.append((f"{level.removeprefix('ORT_')}, {threads} threads", session))
    return found


def bench_arch(arch: str, batch: int, iters: int, repeat: int, folder: Path, explore: bool):
    """Rows of (runtime, options, images/s, max diff of normalised embeddings vs torch)."""
    torch.manual_seed(0)
    model = build_backbone(arch).eval()
    x = to_input(synthetic_crops(batch), "adaface").numpy()
    path = export_onnx(model, folder / f"{arch}.onnx")

    def run_torch(a: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(a))[0].numpy()

    expected = run_torch(x)
    rows, runners = [("torch", f"{torch.get_num_threads()} threads", "")], [run_torch]
    for label, session in sessions(path, explore):
        features = session.run(["features"], {"input": x})[0]
        diff = np.abs(features / np.linalg.norm(features, axis=1, keepdims=True) - expected).max()
        rows.append(("onnxruntime", label, f"{diff:.1e}"))
        runners.append(lambda a, s=session: s.run(["features"], {"input": a}))
    speeds = images_per_second(runners, x, iters, repeat)
    return [(runtime, label, ips, diff) for (runtime, label, diff), ips in zip(rows, speeds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", choices=ARCHS, default=["ir_18", "ir_101"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3, help="batches per timed run")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs; the fastest is reported")
    ap.add_argument("--explore", action="store_true", help="also time every graph optimisation level x thread count")
    args = ap.parse_args()

    print(f"batch {args.batch}, {args.iters} batches x best of {args.repeat}, {usable_cores()} usable cores, "
          f"torch {torch.__version__}")
    header = f"{'arch':<8} {'runtime':<12} {'options':<36} {'images/s':>9} {'vs torch':>9} {'max diff':>9}"
    print(header + "\n" + "-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            rows = bench_arch(arch, args.batch, args.iters, args.repeat, Path(tmp), args.explore)
            torch_ips = rows[0][2]
            for runtime, options, ips, diff in rows:
                print(f"{arch:<8} {runtime:<12} {options:<36} {ips:>9.1f} {ips / torch_ips:>8.2f}x {diff:>9}",
                      flush=True)


if __name__ == "__main__":
    main()
