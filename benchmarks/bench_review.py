"""Time the review app's functions on a synthetic work folder of N identities (default 100,000 x 10 = 1,000,000 photos).

Generates a label store (synthetic rows, no image files: thumbnails are placeholders), flags like a clean would write
(outlier/minority with suggestions, merge, split, duplicate, fake_mismatch), nodes.parquet, a float16 embeddings.npy and a
report.json, then times what the queue page and the identity page call on every rerun. Goal: each page under a second.

    python benchmarks/bench_review.py                                # full size (~1.5 GB on disk, a few minutes to build)
    python benchmarks/bench_review.py --identities 2000 --photos 10  # quick check
    python benchmarks/bench_review.py --workdir /tmp/bench_work --keep   # keep the folder to open it in the app
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation import review as rv  # noqa: E402
from labels.store import FoundImage, LabelStore, NewFlag  # noqa: E402


def build(work: Path, n_ids: int, per_id: int, dim: int, seed: int) -> None:
    """Write the synthetic work folder: store, flags, nodes.parquet, embeddings.npy, report.json."""
    rng = np.random.default_rng(seed)
    names = [f"{i:06d}" for i in range(n_ids)]
    n = n_ids * per_id
    ident = np.repeat(np.arange(n_ids), per_id)
    k = np.tile(np.arange(per_id), n_ids)
    is_fake = k == per_id - 1  # one deepfake per identity
    store = LabelStore.open(work)
    store.set_meta(dataset_root=str(work / "no_photos_here"))
    chunk = 100_000
    for s in tqdm(range(0, n, chunk), desc="store rows", unit_scale=chunk):
        store.add_images(
            FoundImage(f"{names[ident[i]]}/{k[i]}.jpg", 20_000, 0, names[ident[i]], bool(is_fake[i]), f"{i:064x}", 112, 112)
            for i in range(s, min(n, s + chunk))
        )
    # flags: ~10% of real photos outlier/minority (with a suggestion), 1% merge, 0.5% split, 0.5% duplicate, 2% fake
    flags = []
    real = np.flatnonzero(~is_fake)
    for i in rng.choice(real, size=len(real) // 10, replace=False):
        kind = "outlier" if rng.random() < 0.5 else "minority"
        flags.append(NewFlag(kind, names[ident[i]], f"{names[ident[i]]}/{k[i]}.jpg", names[rng.integers(n_ids)],
                             -1 if kind == "outlier" else 1, float(rng.uniform(-0.1, 0.5))))
    for a in rng.choice(n_ids, size=max(1, n_ids // 100), replace=False):
        flags.append(NewFlag("merge", names[a], None, names[rng.integers(n_ids)], None, float(rng.uniform(0.3, 0.9))))
    for a in rng.choice(n_ids, size=max(1, n_ids // 200), replace=False):
        flags.append(NewFlag("split", names[a], None, None, 1, float(rng.uniform(0.3, 0.6))))
    for i in rng.choice(real, size=max(1, n // 200), replace=False):
        flags.append(NewFlag("duplicate", names[ident[i]], f"{names[ident[i]]}/{k[i]}.jpg", None, None, 0.99))
    for i in rng.choice(np.flatnonzero(is_fake), size=max(1, n_ids // 50), replace=False):
        flags.append(NewFlag("fake_mismatch", names[ident[i]], f"{names[ident[i]]}/{k[i]}.jpg", None, None, 0.1))
    t = time.perf_counter()
    store.replace_flags("clean", flags)
    print(f"{len(flags):,} flags written in {time.perf_counter() - t:.1f}s")
    ids = store.images().id.to_numpy()  # inserted in order: row i <-> ids[i]

    (work / "clean").mkdir(exist_ok=True)
    emb = np.lib.format.open_memmap(work / "clean" / "embeddings.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    for s in tqdm(range(0, n, chunk), desc="embeddings", unit_scale=chunk):
        e = centres[ident[s : s + chunk]] + 0.8 * rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        emb[s : s + chunk] = e / np.linalg.norm(e, axis=1, keepdims=True)
    emb.flush()
    del emb
    component = np.where(is_fake, -1, np.where(rng.random(n) < 0.05, -1, 0))
    nodes = pd.DataFrame({
        "image_id": ids, "path": [f"{names[ident[i]]}/{k[i]}.jpg" for i in range(n)],
        "identity": np.asarray(names)[ident], "is_fake": is_fake, "component": component,
        "sim_to_main": rng.uniform(0.2, 0.8, n).astype(np.float32), "emb_row": np.arange(n),
    })
    nodes.to_parquet(work / "clean" / "nodes.parquet", index=False)
    edges = np.linspace(-1, 1, 101)
    report = {
        "thresholds": {"edge": {"value": 0.3}, "duplicate": {"value": 0.95}, "merge": {"value": 0.5},
                       "split": {"ratio": 0.5}},
        "noise_rate": {"overall": 0.1},
        "similarity_histogram": {
            "bin_edges": edges.tolist(),
            "same_identity": np.histogram(rng.normal(0.6, 0.1, 100_000), edges)[0].tolist(),
            "cross_identity": np.histogram(rng.normal(0.0, 0.1, 100_000), edges)[0].tolist(),
        },
    }
    (work / "report.json").write_text(json.dumps(report))
    store.close()


def timed(label: str, fn, repeat: int = 1):
    """Run fn `repeat` times and print the median wall time; returns the last result."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    print(f"  {label:<48} {np.median(times) * 1000:9.1f} ms" + (f"  (median of {repeat})" if repeat > 1 else ""))
    return out


def time_app_pages(root: Path, identity: str) -> None:
    """Whole-page reruns of the real app (app.py in Streamlit's AppTest: every query and element, no browser)."""
    from streamlit.testing.v1 import AppTest

    sys.argv = ["app.py", "--workdir", str(root)]
    app = str(Path(__file__).resolve().parents[1] / "app.py")
    print("whole app reruns (AppTest, warm caches):")
    for view, extra in (("Queue", {}), ("Queue", {"order": "information"}), ("Identity", {"identity": identity}),
                        ("Overview", {})):
        at = AppTest.from_file(app, default_timeout=600)
        at.query_params.update(reviewer="bench", view=view, **extra)
        t = time.perf_counter()
        at.run()
        first = time.perf_counter() - t
        if at.exception:
            print(f"  {view}: {at.exception[0].value}")
            continue
        label = view + (f" ({extra['order']})" if "order" in extra else "")
        timed(f"{label} page rerun (first run {first * 1000:.0f} ms)", at.run, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--photos", type=int, default=10, help="photos per identity (default 10)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where to build (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_review_"))
    if (root / "labels.sqlite").exists():
        print(f"reusing {root}")
    else:
        root.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        build(root, args.identities, args.photos, args.dim, args.seed)
        print(f"built {args.identities:,} identities x {args.photos} photos in {time.perf_counter() - t:.0f}s at {root}")
    try:
        work = rv.WorkFolder.open(root)
        store = LabelStore.open(root)
        print("once per clean (cached by the app):")
        clean = timed("load_clean (nodes.parquet + mmap embeddings)", lambda: rv.load_clean(work))
        summary = rv.summarize_report(rv.read_report(work))
        snap = timed("queue_snapshot, full pass (after a clean / filter)", lambda: rv.queue_snapshot(store, summary))
        timed("queue_snapshot filtered to minority, full pass",
              lambda: rv.queue_snapshot(store, summary, kinds=["minority"]))
        timed("queue_snapshot, information order (after each decision)",
              lambda: rv.queue_snapshot(store, summary, order="information"))
        print("queue page (every rerun):")
        timed("queue_snapshot, store unchanged", lambda: rv.queue_snapshot(store, summary, previous=snap), 3)
        first = snap.frame.identity.iloc[0]
        flagged = store.flags(identity=first, status="open").image_id.dropna().astype(int).tolist()[:1]
        out = rv.apply_action(store, "remove", reviewer="bench", image_ids=flagged) if flagged else None
        snap = timed("queue_snapshot after one decision (incremental)",
                     lambda: rv.queue_snapshot(store, summary, previous=snap))
        if out:
            rv.undo_decision(store, out.decision_id, reviewer="bench")
        timed("queue_page (25 rows, page 40)", lambda: rv.queue_page(store, snap, offset=1000), 3)
        timed("next_identity", lambda: rv.next_identity(snap, snap.frame.identity.iloc[3], 3), 3)
        timed("store.version() (cache key)", store.version, 3)
        timed("history_lines (15)", lambda: rv.history_lines(store), 3)
        queue = snap
        print(f"identity page (every rerun; {queue.total:,} identities queued):")
        picks = queue.frame.identity.iloc[queue.total // 2 :][:20].tolist()
        t = time.perf_counter()
        for name in picks:
            view = rv.identity_view(store, clean, name)
        print(f"  {'identity_view (mean of ' + str(len(picks)) + ')':<48} {(time.perf_counter() - t) / len(picks) * 1000:9.1f} ms")
        timed("heatmap_figure", lambda: rv.heatmap_figure(view), 3)
        roots = rv.allowed_roots(store, work)
        timed(f"thumbnails of one identity ({len(view.photos)} placeholders)", lambda: [
            rv.load_thumbnail(rv.photo_source(store, work, p)[0] or root, roots) for _, p in view.photos.iterrows()
        ])
        name = picks[0]
        ids = rv.identity_view(store, clean, name).flagged_ids()[:1] or view.flagged_ids()[:1]
        out = timed("apply_action remove (one decision)", lambda: rv.apply_action(store, "remove", reviewer="bench",
                                                                                  image_ids=ids))
        timed("undo_decision", lambda: rv.undo_decision(store, out.decision_id, reviewer="bench"))
        print("other pages:")
        timed("overview", lambda: rv.overview(store, rv.read_report(work)), 3)
        timed("find_identities (autocomplete '0012')", lambda: rv.find_identities(store, "0012"), 3)
        timed("search ('99/3.jpg')", lambda: rv.search(store, "99/3.jpg"), 3)
        store.close()
        time_app_pages(root, picks[0])
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
