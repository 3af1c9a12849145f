"""Scale benchmark of cleaning precomputed embeddings: synthetic float16 files on disk, flagged from a memory map.

Writes (once per size, into --data) what a user of `python -m curation.clean --embeddings EMB.npy --index INDEX.csv`
would have: clustered float16 embeddings with 5% planted wrong labels and some identities split over two labels
(curation.flagging.noise.synthetic_embeddings, written to the .npy chunk by chunk, in a child process, so neither generation
nor its memory counts here), INDEX.csv (image,identity) and the truth. Then it times, in this process:
1. `curation.clean.load_index` (INDEX.csv read and checked row by row; EMB.npy opened with mmap_mode="r");
2. `curation.flagging.flag_embeddings` on the memory map (stages: prepare, calibrate, graph, search_suggest,
   search_merge, assemble), or with --full the whole `curation.clean.clean_embeddings` (label store, outputs);
and prints seconds, how well the planted labels and split identities were found, and memory:
- peak RSS (resource.getrusage ru_maxrss): everything resident, *including* the pages of EMB.npy that the memory map
  has touched. Those are the file's page cache: the kernel drops them when memory is short, so they bound nothing;
- peak anonymous memory (RssAnon from /proc/self/status, sampled every 50 ms): what the process itself allocated,
  the figure that must stay bounded (tracemalloc is not used: it slows every allocation and misses torch's and faiss's).

    python benchmarks/bench_flagging.py --photos 1000000                    # 100,000 identities, 512-d (1 GB file)
    python benchmarks/bench_flagging.py --photos 10000000 --dim 128         # 1,000,000 identities (2.6 GB file)
    python benchmarks/bench_flagging.py --photos 1000000 --compare-indexes  # IVF vs HNSW32 vs IVF+SQ8 on the centroids
    python benchmarks/bench_flagging.py --photos 1000000 --full --workdir /tmp/w   # + label store and every output
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.flagging.calibrate import identity_centroids  # noqa: E402
from curation.clean import clean_embeddings, load_index  # noqa: E402
from curation.flagging import FlagConfig, flag_embeddings  # noqa: E402
from curation.flagging.noise import synthetic_embeddings  # noqa: E402
from curation.flagging.search import build_index, knn, plan_index  # noqa: E402


class PeakMemory:
    """Peak anonymous and file-backed resident memory of this process, sampled in a thread (GB)."""

    def __init__(self, every: float = 0.05):
        self.every = every
        self.anon, self.file = self._now()
        self.libraries = self.file  # file-backed before any data is read: the shared libraries (torch, faiss, ...)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _now() -> tuple[float, float]:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(fields["RssAnon"].split()[0]) / 2**20, int(fields["RssFile"].split()[0]) / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            anon, file = self._now()
            self.anon, self.file = max(self.anon, anon), max(self.file, file)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def __str__(self) -> str:
        return (f"peak anonymous {self.anon:.2f} GB, peak file-backed {self.file:.2f} GB "
                f"(about {self.libraries:.2f} GB of it shared libraries, the rest EMB.npy's pages)")


def generate(data: Path, photos: int, per_identity: int, dim: int, moved: float, split: int, seed: int) -> None:
    """EMB.npy, INDEX.csv, given.npy, truth.npy in `data` (run in a child process: its memory is not measured)."""
    data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    emb, given, truth = synthetic_embeddings(
        photos // per_identity, per_identity, dim, moved=moved, split=split, seed=seed, path=data / "emb.npy.tmp.npy"
    )
    emb.flush()
    del emb
    with open(data / "index.csv.tmp", "w") as f:
        f.write("image,identity\n")
        for s in range(0, len(given), 1_000_000):
            g = given[s : s + 1_000_000]
            names = pd.Series(g).map("id{:07d}".format)
            images = names + "/" + pd.Series(np.arange(s, s + len(g))).map("{:09d}.jpg".format)
            pd.DataFrame({"image": images, "identity": names}).to_csv(f, header=False, index=False)
    np.save(data / "given.npy", given)
    np.save(data / "truth.npy", truth)
    (data / "index.csv.tmp").replace(data / "index.csv")
    (data / "emb.npy.tmp.npy").replace(data / "emb.npy")  # last: its presence means the set is complete
    print(f"generated {len(given):,} x {dim} float16 embeddings, {given.max() + 1:,} identities into {data} "
          f"in {time.perf_counter() - t0:.1f} s (peak RSS of the generator "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB)", flush=True)


def score(flags: pd.DataFrame, given: np.ndarray, truth: np.ndarray, n_ids: int, split: int) -> list[str]:
    """How the flags match the planted noise (identity names are 'id' + the code)."""
    noisy = flags[flags.flag.isin(["outlier", "minority"])]
    rows = noisy.row.to_numpy()
    moved = (given != truth) & (given < n_ids)  # photos of a split identity under its second label are not moved
    hit = moved[rows]
    sugg = noisy.suggested_identity.to_numpy()[hit]
    sugg = np.array([int(str(x)[2:]) if isinstance(x, str) and x else -1 for x in sugg], dtype=np.int64)
    sugg_right = np.mean(np.where(sugg >= n_ids, sugg - n_ids, sugg) == truth[rows[hit]]) if len(sugg) else float("nan")
    merges = flags[flags.flag == "merge"]
    pairs = {tuple(sorted((int(a[2:]), int(b[2:])))) for a, b in zip(merges.identity, merges.suggested_identity)}
    found = sum((j, n_ids + j) in pairs for j in range(split))
    return [
        f"flags: {flags.flag.value_counts().to_dict()}",
        f"planted: {moved.sum():,} moved; precision {hit.mean():.3f}, recall {hit.sum() / max(moved.sum(), 1):.3f}, "
        f"suggested identity right {sugg_right:.3f}",
        f"merges: {found} of {split} split identities found, {len(merges) - found} other merge flags",
    ]


def compare_indexes(emb: np.ndarray, given: np.ndarray, factories: list[str], nprobe: int, seed: int) -> None:
    """Build + search time and recall of faiss indexes on the identity centroids (default: IVF, HNSW32, IVF+SQ8)."""
    rows = np.flatnonzero(given >= 0)
    cent = identity_centroids(emb, given, rows, int(given.max()) + 1)
    rng = np.random.default_rng(seed)
    probe = np.sort(rng.choice(len(cent), min(len(cent), 10_000), replace=False))
    photos = np.sort(rng.choice(len(emb), min(len(emb), 100_000), replace=False))
    queries = np.asarray(emb[photos], np.float32)
    exact = build_index(cent, factory="Flat")
    ref_c = knn(exact, cent[probe], 6)[1]
    ref_q = knn(exact, queries[: len(probe)], 3)[1]
    print(f"centroid search, {len(cent):,} x {cent.shape[1]} centroids: merge step = every centroid's 6 nearest "
          f"(nprobe {max(1, nprobe // 4)}), suggest step = {len(photos):,} photos' 3 nearest (nprobe {nprobe}); "
          "recall@1 / recall@6 against exact search on 10,000 queries")
    ivf = plan_index(len(cent)).split(",")[0]
    for factory in factories or (f"{ivf},Flat", "HNSW32", f"{ivf},SQ8"):
        t0 = time.perf_counter()
        index = build_index(cent, factory=factory, nprobe=nprobe, seed=seed)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids_c = knn(index, cent, 6, nprobe=max(1, nprobe // 4))[1]
        merge = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids_q = knn(index, queries, 3, nprobe=nprobe)[1]
        suggest = time.perf_counter() - t0
        r1 = np.mean(ids_q[: len(probe), 0] == ref_q[:, 0])
        r6 = np.mean([len(set(a) & set(b)) / 6 for a, b in zip(ids_c[probe], ref_c)])
        print(f"  {factory:16s} build {build:6.1f} s   merge search {merge:6.1f} s   suggest search {suggest:6.1f} s   "
              f"photo recall@1 {r1:.3f}   centroid recall@6 {r6:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=100_000)
    p.add_argument("--per-identity", type=int, default=10)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--moved", type=float, default=0.05)
    p.add_argument("--split", type=int, default=20, help="identities split over two labels (merges to find)")
    p.add_argument("--data", help="folder for the generated files (default /tmp/facecur-bench-PHOTOSxDIM; reused)")
    p.add_argument("--chunk-rows", type=int, default=FlagConfig.chunk_rows, help="photos per chunk of identities")
    p.add_argument("--faiss-index", help="faiss factory string for the centroid index (default: by size)")
    p.add_argument("--compare-indexes", nargs="*", metavar="FACTORY",
                   help="only compare faiss indexes on the centroids (default: IVF, HNSW32, IVF+SQ8 as sized)")
    p.add_argument("--full", action="store_true", help="run the whole clean_embeddings (label store, outputs)")
    p.add_argument("--workdir", help="work folder for --full (default: DATA/work, emptied first)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    data = Path(args.data or f"/tmp/facecur-bench-{args.photos}x{args.dim}")
    if not (data / "emb.npy").is_file():
        child = multiprocessing.get_context("fork").Process(
            target=generate,
            args=(data, args.photos, args.per_identity, args.dim, args.moved, args.split, args.seed),
        )
        child.start()
        child.join()
        if child.exitcode:
            sys.exit(f"generating {data} failed (exit code {child.exitcode})")
    given, truth = np.load(data / "given.npy"), np.load(data / "truth.npy")
    n_ids = args.photos // args.per_identity
    if args.compare_indexes is not None:
        emb = np.load(data / "emb.npy", mmap_mode="r")
        compare_indexes(emb, given, args.compare_indexes, FlagConfig.nprobe, args.seed)
        return
    config = FlagConfig(seed=args.seed, chunk_rows=args.chunk_rows, faiss_index=args.faiss_index)

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        if args.full:
            work = Path(args.workdir or data / "work")
            shutil.rmtree(work, ignore_errors=True)
            outcome = clean_embeddings(data / "emb.npy", data / "index.csv", work, config=config, device=args.device)
            total = time.perf_counter() - t0
            t = outcome.report["timings"]
            image = outcome.flags.image.astype(str)  # "id0000007/000000123.jpg" is row 123; "" for identity flags
            flags = outcome.flags.assign(row=pd.to_numeric(image.str.slice(10, 19), errors="coerce").fillna(-1))
            flags["row"] = flags.row.astype(np.int64)
            res_index = outcome.report["thresholds"]["index"]
            print(f"clean_embeddings: {total:.1f} s  ({', '.join(f'{k} {v:.1f}s' for k, v in t.items())})")
        else:
            emb, index, messages = load_index(data / "emb.npy", data / "index.csv")
            read = time.perf_counter() - t0
            print(f"load_index: {read:.1f} s for {len(index):,} rows (peak anonymous so far {mem.anon:.2f} GB)")
            t0 = time.perf_counter()
            res = flag_embeddings(emb, index.identity.to_numpy(), index.is_fake.to_numpy(), index.ok.to_numpy(),
                                  config=config, device=args.device, progress=True)
            seconds = time.perf_counter() - t0
            flags, res_index = res.flags, res.thresholds["index"]
            print(f"flagging: {seconds:.1f} s  ({', '.join(f'{k} {v:.1f}s' for k, v in res.timings.items())})")
            print(f"edge threshold {res.thresholds['edge']['value']:.4f}; graphs: "
                  f"{(res.identities.via == 'networkx').sum():,} identities via networkx, "
                  f"{(res.identities.via == 'proof').sum():,} proven connected")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"CPU time {usage.ru_utime + usage.ru_stime:.0f} s (all threads; wall time above depends on the load)")
    print(f"memory: peak RSS {usage.ru_maxrss / 2**20:.2f} GB; {mem}; "
          f"EMB.npy is {(data / 'emb.npy').stat().st_size / 2**30:.2f} GB, N x D float32 would be "
          f"{len(given) * args.dim * 4 / 2**30:.2f} GB")
    print(f"centroid index: {res_index['kind']} over {res_index['rows']:,} identities; chunks of "
          f"{args.chunk_rows:,} photos")
    for line in score(flags, given, truth, n_ids, args.split):
        print(line)


if __name__ == "__main__":
    main()
