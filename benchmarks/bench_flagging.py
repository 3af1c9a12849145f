"""Scale benchmark of the flagging stage (graphs + calibration + faiss) on synthetic embeddings.

Generates clustered 512-d float16 embeddings with 5% planted wrong labels (curation.noise.synthetic_embeddings), then
times `curation.flagging.flag_embeddings` and prints seconds, peak memory (the process's peak resident set from
resource.getrusage, before and after flagging; tracemalloc is not used: it slows every Python allocation several-fold
and would distort the timings) and how well the planted labels and the split identities were found.

    python benchmarks/bench_flagging.py --photos 100000            # ~10,000 identities
    python benchmarks/bench_flagging.py --photos 1000000           # 100,000 identities (the goal: < 2 min, < 8 GB)
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.flagging import FlagConfig, flag_embeddings  # noqa: E402
from curation.noise import synthetic_embeddings  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=100_000)
    p.add_argument("--per-identity", type=int, default=10)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--moved", type=float, default=0.05)
    p.add_argument("--split", type=int, default=20, help="identities split over two labels (merges to find)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    t0 = time.perf_counter()
    emb, given, truth = synthetic_embeddings(
        args.photos // args.per_identity, args.per_identity, args.dim, moved=args.moved, split=args.split, seed=args.seed
    )
    gen = time.perf_counter() - t0
    print(f"generated {len(emb):,} x {args.dim} float16 embeddings, {given.max() + 1:,} identities in {gen:.1f} s")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = flag_embeddings(emb, given, config=FlagConfig(seed=args.seed), device=args.device, progress=True)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    f = res.flags
    noisy = f[f.flag.isin(["outlier", "minority"])]
    n_ids = args.photos // args.per_identity
    moved = (given != truth) & (given < n_ids)  # photos of a split identity under its second label are not moved
    merges = f[f.flag == "merge"]
    pairs = {tuple(sorted((int(a), int(b)))) for a, b in zip(merges.identity, merges.suggested_identity)}
    found = sum((j, n_ids + j) in pairs for j in range(args.split))
    hit = moved[noisy.row.to_numpy()]
    sugg = noisy.suggested_identity.to_numpy()[hit].astype(np.int64)
    sugg_right = np.mean(np.where(sugg >= n_ids, sugg - n_ids, sugg) == truth[noisy.row.to_numpy()[hit]])
    print(f"flagging: {seconds:.1f} s  ({', '.join(f'{k} {v:.1f}s' for k, v in res.timings.items())})")
    print(f"peak memory: {rss / 1024:.2f} GB resident for the whole process ({rss_before / 1024:.2f} GB peak before "
          f"flagging, i.e. generating the data; the embeddings alone take {emb.nbytes / 2**30:.2f} GB)")
    print(f"edge threshold {res.thresholds['edge']['value']:.4f}; index {res.thresholds['index']['kind']}; "
          f"graphs: {(res.identities.via == 'networkx').sum():,} identities via networkx, "
          f"{(res.identities.via == 'proof').sum():,} proven connected")
    print(f"flags: {f.flag.value_counts().to_dict()}")
    print(f"planted: {moved.sum():,} moved; precision {hit.mean():.3f}, recall {hit.sum() / max(moved.sum(), 1):.3f}, "
          f"suggested identity right {sugg_right:.3f}")
    print(f"merges: {found} of {args.split} split identities found, {len(merges) - found} other merge flags")


if __name__ == "__main__":
    main()
