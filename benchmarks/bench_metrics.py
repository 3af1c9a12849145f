"""How long the verification metrics take on N scored pairs (default 10M, the size of a large validation or test set).

Synthetic cosine-like float32 scores for the challenge's three pair types (50% same person, 25% different people, 25%
deepfake of the same person); `--decimals` rounds them to create heavy ties. Prints seconds for the whole
`verification_report` (one sort, every metric, per-type rates, thinned curve) and for each public function alone.

    python benchmarks/bench_metrics.py                 # 10M pairs (the figure to report; ~1 GB of RAM)
    python benchmarks/bench_metrics.py --n 1000000 --decimals 2
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.scoring import metrics  # noqa: E402
from curation.training.pairs import PAIR_KINDS, DIFFERENT, OWN_FAKE, SAME  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000, help="number of pairs (default 10M)")
    ap.add_argument("--decimals", type=int, default=None, help="round scores to this many decimals (heavy ties)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest is printed")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    kind = rng.choice(np.array([SAME, DIFFERENT, OWN_FAKE], np.int8), args.n, p=[0.5, 0.25, 0.25])
    mean = np.select([kind == SAME, kind == OWN_FAKE], [0.55, 0.35], 0.05).astype(np.float32)
    scores = mean + rng.standard_normal(args.n, dtype=np.float32) * np.float32(0.15)
    if args.decimals is not None:
        scores = np.round(scores, args.decimals)
    labels = kind == SAME
    print(f"{args.n:,} pairs, {len(np.unique(scores)):,} distinct scores, float32"
          + (f" rounded to {args.decimals} decimals" if args.decimals is not None else ""))

    def best(fn) -> float:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    rows = [
        ("verification_report (all metrics, per type, curve)",
         lambda: metrics.verification_report(scores, labels, kind, type_names=PAIR_KINDS)),
        ("equal_error_rate (bob)", lambda: metrics.equal_error_rate(scores, labels)),
        ("roc_eer (organisers)", lambda: metrics.roc_eer(scores, labels)),
        ("tar_at_far (3 FARs)", lambda: metrics.tar_at_far(scores, labels)),
        ("det_curve (thinned)", lambda: metrics.det_curve(scores, labels)),
        ("accuracy_at", lambda: metrics.accuracy_at(scores, labels, 0.3)),
        ("error_rates_by_type (int codes)",
         lambda: metrics.error_rates_by_type(scores, labels, kind, 0.3, type_names=PAIR_KINDS)),
    ]
    for name, fn in rows:
        print(f"{name:<55s} {best(fn):7.2f} s")
    r = metrics.verification_report(scores, labels, kind, type_names=PAIR_KINDS)
    print(f"EER {r.eer:.4f} (organisers' {r.eer_roc:.4f}); curve points kept: {len(r.curve.far):,}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
