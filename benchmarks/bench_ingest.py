"""Time ingest (and a hard-link export) on N small JPEGs in the challenge layout (default 100,000 files).

Generates DATA/images/<identity>/<n>.jpg + DATA/meta.json (one deepfake per identity, 0.5% exact duplicates) in a
temporary folder, then times: the first ingest (every file hashed and fully decoded), a re-ingest with nothing changed
(size+mtime check only), a re-ingest after 1% of the files changed, and `export --format folders`. Each photo is one
of a few synthetic JPEG encodings with a unique trailer after its end-of-image marker: unique bytes (so a unique
sha256) for the price of one encoding, decoded exactly like the original.

    python benchmarks/bench_ingest.py                          # full size: 100,000 files (~0.7 GB, a few minutes)
    python benchmarks/bench_ingest.py --files 2000             # quick check
    python benchmarks/bench_ingest.py --side 250 --workers 4   # larger photos, fewer threads
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labels.export import export  # noqa: E402
from labels.ingest import DEFAULT_WORKERS, ingest  # noqa: E402


def encodings(side: int, n: int, seed: int) -> list[bytes]:
    """A few smooth random photos as JPEG bytes (noise upsampled: compresses like a photo, unlike raw noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        buf = BytesIO()
        small.resize((side, side), Image.BICUBIC).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build(data: Path, n_files: int, per_identity: int, side: int, seed: int) -> None:
    jpegs = encodings(side, 16, seed)
    meta = {}
    for i in tqdm(range(n_files), desc="writing photos", unit="file"):
        rel = f"{i // per_identity:06d}/{i % per_identity}.jpg"
        path = data / "images" / rel
        if i % per_identity == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        if i % 200 != 199:  # every 200th photo is an exact copy of the one before
            content = jpegs[i % len(jpegs)] + i.to_bytes(8, "little")
        path.write_bytes(content)
        meta[rel] = int(i % per_identity == per_identity - 1)
    (data / "meta.json").write_text(json.dumps(meta))


def timed(label: str, n: int, fn) -> object:
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"{label:<34} {seconds:8.1f} s   {n / seconds:10,.0f} files/s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-identity", type=int, default=10)
    parser.add_argument("--side", type=int, default=160, help="photo width and height in pixels (default %(default)s)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--dir", help="where to build (default: a temporary folder, deleted afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    data, work = base / "data", base / "work"
    try:
        build(data, args.files, args.per_identity, args.side, args.seed)
        size = sum(f.stat().st_size for f in (data / "images").rglob("*.jpg"))
        print(
            f"{args.files:,} JPEGs of {args.side}x{args.side} ({size / 2**20:,.0f} MiB), {args.workers} threads, "
            f"{os.cpu_count()} CPUs; figures are indicative on a shared machine"
        )
        n = args.files
        run = lambda: ingest(data, work, workers=args.workers, progress=False)  # noqa: E731
        first = timed("ingest (hash + full decode)", n, run)
        assert first.n_new == n and first.n_duplicates == n // 200, (first.n_new, first.n_duplicates)
        again = timed("re-ingest, nothing changed", n, run)
        assert again.n_unchanged == n
        changed = sorted((data / "images").rglob("*.jpg"))[:: 100]
        for p in changed:
            p.write_bytes(p.read_bytes() + b"changed")
        third = timed(f"re-ingest, {len(changed):,} files changed", n, run)
        assert third.n_reread == len(changed)
        timed("export --format folders (links)", n, lambda: export(work, base / "clean", progress=False))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")


if __name__ == "__main__":
    main()
