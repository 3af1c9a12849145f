"""`python -m curation.clean`: ingest -> align -> embed -> flag, with everything a reviewer and the app need written out.

Three ways in:
- a dataset folder (identity folders, optional meta.json marking deepfakes, or the challenge layout): cleaned as is;
- `--embeddings EMB.npy --index INDEX.csv`: precomputed embeddings. Row i of INDEX.csv (`image,identity[,is_fake]`)
  describes row i of EMB.npy. The label store gets one image per index row *without reading any file* (size 0, no
  hash; the dataset root recorded is INDEX.csv's folder, so the app shows the photos if they exist there);
- nothing (the demo), or `--plant-noise` with a clean dataset: plant known label noise in a copy (curation.flagging.noise), clean
  the copy and print how well the flags matched the planted errors. The demo's photos are LFW (downloaded once, checksum
  verified; curation.flagging.demo) or `--from DIR`, any folder of identity folders.

Outputs in WORK: labels.sqlite (flags of source 'clean', replaced as a set each run; reviewers' answers are kept),
flags.csv (every open flag of the store, ingest's unreadable files and exact duplicates included), report.json (its
counts are flags.csv's), clean/nodes.parquet + clean/embeddings.npy (see ARCHITECTURE.md). Embeddings are cached under
WORK/cache by content hash, so a killed or repeated run re-embeds nothing it finished.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from curation.cli import RESUME_HINT, add_embedding_options, build_embedder, embed_options
from curation.flagging import FlagConfig, flag_embeddings, noise
from curation.flagging.calibrate import DEFAULT_TARGET_FMR
from curation.flagging.demo import DownloadError, fetch_lfw
from curation.flagging.graph import STREAM_BUDGET, slice_rows, take_rows
from curation.review.queue import summarize_report
from curation.review.simulate import SimulatedReview, simulate_review
from curation.workfolder import WorkFolder, write_embeddings, write_flags, write_nodes, write_report
from embeddings.options import ENGINES, EmbedOptions
from labels.cli import UserError, command_parser, run_command
from labels.store import LabelStore, usable_identity_names

SOURCE = "clean"
WEAK = "embedded from where faces sit in the dataset's other photos (a weak alignment)"
REVIEW_COMMAND = "streamlit run app.py -- --workdir {work}"
CLEAN_COLUMNS = ("id", "path", "sha256", "identity", "is_fake")  # what _flag_and_write reads of the store's images

EPILOG = """examples:
  python -m curation.clean photos --workdir work                  # dlib embedder, CPU or GPU as available
  python -m curation.clean photos --workdir work --model ir:ir_101:adaface_ir101_webface12m.ckpt --device cuda
  python -m curation.clean photos --workdir work --threshold 0.2  # set the edge threshold yourself
  python -m curation.clean /shared/photos --workdir /shared/work --engine ray --ray-address auto  # on a Ray cluster
  python -m curation.clean --embeddings emb.npy --index index.csv --workdir work
  python -m curation.clean                                        # demo: LFW with planted noise, then the score
  python -m curation.clean --from ../shared/faces/lfw             # demo on local identity folders (no download)
  python -m curation.clean my_clean_set --plant-noise --workdir w # measure the tool on your own clean data
"""


@dataclass
class CleanOutcome:
    workdir: Path
    report: dict
    flags: pd.DataFrame  # flags.csv as written: every open flag of the store
    messages: list[str] = field(default_factory=list)


# ---- the index mode --------------------------------------------------------------------------------------------------
def _truthy(value: str) -> bool | None:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "fake"):
        return True
    if v in ("", "0", "false", "no", "real"):
        return False
    return None


_INDEX_PROBLEMS = {  # load_index's reasons to skip a row, by code
    1: "empty or unsafe image path (absolute, or with ..)",
    2: "is_fake is not 0/1/true/false",
    3: "identity is empty or not a usable folder name",
    4: "the same image path again (the first row is used)",
}


def _read_index_csv(path: Path) -> pd.DataFrame:
    """INDEX.csv as text columns ("" for empty fields).

    pyarrow's reader first (ten million rows in under a second, the C parser takes six); it reads a well-formed file
    exactly as the C parser does but refuses ragged rows, blank lines of spaces and bytes that are not UTF-8, so those
    files go to the C parser, which reads them as before (short rows filled with "") or raises its own error.
    """
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, engine="pyarrow")
    except (ImportError, OSError, ValueError):
        return pd.read_csv(path, dtype=str, keep_default_na=False)


def _repeated(values: pd.Series) -> np.ndarray:
    """values.duplicated() (every appearance after the first) from the factorized codes, which number the distinct
    values in order of first appearance: a row repeats one when its code is not above every code before it."""
    codes, _ = pd.factorize(values, use_na_sentinel=False)
    repeated = np.zeros(len(codes), bool)
    repeated[1:] = codes[1:] <= np.maximum.accumulate(codes)[:-1]
    return repeated


def load_index(emb_path: str | Path, index_path: str | Path) -> tuple[np.ndarray, pd.DataFrame, list[str]]:
    """Read EMB.npy (memory-mapped) and INDEX.csv and check they describe each other row for row.

    Returns (embeddings, index with columns image, identity, is_fake, ok, messages). Rows with a problem (empty or
    unsafe path, unusable identity, repeated path, unreadable is_fake) get ok=False and a message; a row count that
    differs from EMB.npy's is a UserError, since no row could then be trusted to describe its embedding.
    """
    emb_path, index_path = Path(emb_path), Path(index_path)
    try:
        emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{emb_path}: not a readable .npy array ({exc})") from exc
    if emb.ndim != 2 or emb.dtype.kind != "f":
        raise UserError(f"{emb_path}: expected a 2-d float array (N x D), found shape {emb.shape} dtype {emb.dtype}")
    if emb.dtype not in (np.float16, np.float32):
        emb = np.asarray(emb, dtype=np.float32)
    try:
        idx = _read_index_csv(index_path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"{index_path}: not a readable CSV ({exc})") from exc
    missing = [c for c in ("image", "identity") if c not in idx.columns]
    if missing:
        raise UserError(
            f"{index_path}: missing column(s) {', '.join(missing)} (expected a header image,identity[,is_fake])"
        )
    if len(idx) != emb.shape[0]:
        raise UserError(
            f"{index_path} has {len(idx):,} rows but {emb_path} has {emb.shape[0]:,}: row i of the index must describe "
            "row i of the embeddings, so nothing can be matched"
        )
    messages = []
    fake = idx["is_fake"].map(_truthy) if "is_fake" in idx.columns else pd.Series(False, index=idx.index)
    images = idx["image"].str.strip()
    if images.str.contains("\\", regex=False).any():
        images = images.str.replace("\\", "/", regex=False)
    # per row, the first problem found (0: none), checked on whole columns (a million rows in a second)
    unsafe = (images == "") | images.str.startswith("/") | images.str.contains(r"(?:^|/)\.\.(?:/|$)|^[^/]*:")
    reason = np.select(
        [unsafe.to_numpy(bool), fake.isna().to_numpy(bool), ~usable_identity_names(idx["identity"])], [1, 2, 3], 0
    )
    ok = reason == 0
    dup = _repeated(images) & ok
    reason[dup] = 4
    ok &= ~dup
    bad_rows = np.flatnonzero(~ok)
    # messages in the order the problems first appear, repeated paths last (they are only known after the others)
    kinds = pd.unique(np.concatenate([reason[bad_rows[~dup[bad_rows]]], reason[bad_rows[dup[bad_rows]]]]))
    for kind in kinds:
        rows = bad_rows[reason[bad_rows] == kind]
        shown = ", ".join(str(r + 2) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
        messages.append(f"{index_path}: {len(rows)} row(s) skipped, {_INDEX_PROBLEMS[kind]} (CSV lines {shown})")
    out = pd.DataFrame(
        {"image": images, "identity": idx["identity"].str.strip(), "is_fake": fake.fillna(False).astype(bool), "ok": ok}
    )
    return emb, out, messages


def fill_store_from_index(store: LabelStore, index: pd.DataFrame, root: Path) -> None:
    """One image per usable index row, no file read (size 0, no hash); labels of reviewed images are left alone."""
    recorded = store.get_meta("dataset_root")
    if recorded is None:
        store.set_meta(dataset_root=str(root.resolve()), layout="index")
    rows = index[index.ok]
    store.add_index_images(rows.image.tolist(), rows.identity.tolist(), rows.is_fake.to_numpy(bool))


# ---- shared: flag what the store holds, write every output --------------------------------------------------------
def _twin_by_path(details: dict, paths: np.ndarray) -> dict:
    """A duplicate's details with its twin named by path (the store's rows outlive this run's row numbers)."""
    out = {k: v for k, v in details.items() if k != "duplicate_of_row"}
    out["duplicate_of"] = paths[details["duplicate_of_row"]]
    return out


def _flag_columns(
    flags: pd.DataFrame, images: pd.DataFrame, paths: np.ndarray, status: np.ndarray, weak: np.ndarray | None
) -> dict[str, list]:
    """The store's flag columns (`LabelStore.replace_flag_columns`): the flagging's flags with rows turned into paths,
    then a flag per photo that could not be embedded (unreadable, no face) and per weakly aligned photo."""
    rows = flags.row.to_numpy(np.int64)
    details = [_twin_by_path(d, paths) if "duplicate_of_row" in d else d for d in flags.details]
    columns = {
        "kind": flags.flag.tolist(),
        "identity": [str(x) for x in flags.identity],
        "image_path": np.where(rows >= 0, paths[np.maximum(rows, 0)], None).tolist(),
        "suggested_identity": [None if pd.isna(x) else str(x) for x in flags.suggested_identity],
        "component": flags.component.tolist(),
        "score": flags.score.tolist(),
        "details": details,
    }
    extra: list[tuple[str, int, str]] = []  # (kind, row, reason)
    for i in np.flatnonzero(status != "ok"):
        s = str(status[i])
        if s.startswith("unreadable_at_ingest"):
            continue  # ingest flagged it already (source 'ingest')
        kind = {"unreadable": "unreadable", "no_face": "no_face", "bad_size": "no_face"}.get(s.split(":")[0])
        if kind:
            extra.append((kind, i, s))
    extra += [("weak_alignment", i, WEAK) for i in np.flatnonzero(weak if weak is not None else [])]
    for kind, i, reason in extra:
        for name, value in (("kind", kind), ("identity", str(images.identity.iat[i])), ("image_path", paths[i]),
                            ("suggested_identity", None), ("component", None), ("score", None),
                            ("details", {"reason": reason})):
            columns[name].append(value)
    return columns


def _flag_and_write(
    store: LabelStore,
    work: Path,
    images: pd.DataFrame,
    emb: np.ndarray,
    status: Sequence[str],
    *,
    config: FlagConfig,
    device: str,
    progress: bool,
    report_extra: dict,
    timings: dict,
    messages: list[str],
    weak: np.ndarray | None = None,
    filling: Future | None = None,
) -> CleanOutcome:
    """images: store rows (id, path, sha256, identity, is_fake), row i <-> emb[i] and status[i]; weak[i]: photo i was
    embedded from a guessed crop (no face found in a face-crop photo): it stays in the graphs and is flagged
    weak_alignment. filling: the store's fill, still running beside the flagging; awaited before the flags go in."""
    status_arr = np.asarray(status, dtype=object)
    valid = status_arr == "ok"
    res = flag_embeddings(
        emb, images.identity.to_numpy(), images.is_fake.to_numpy().astype(bool), valid,
        config=config, device=device, progress=progress,
    )
    timings.update({f"flag_{k}": round(v, 3) for k, v in res.timings.items()})
    messages.extend(res.messages)

    t0 = time.perf_counter()
    folder = WorkFolder(work)
    # clean/embeddings.npy is written beside the store's work (numpy and torch copy and normalise without the GIL)
    with ThreadPoolExecutor(1) as background:
        embeddings = background.submit(write_embeddings, folder, emb, np.flatnonzero(valid))
        if filling is not None:
            filling.result()  # raises what the fill raised
            timings["store_wait"] = round(time.perf_counter() - t0, 3)
        paths = images.path.to_numpy(dtype=object)
        store.replace_flag_columns(SOURCE, _flag_columns(res.flags, images, paths, status_arr, weak))
        flags_df = write_flags(folder, store)  # every open flag of the store, ingest's included

        emb_row = np.full(len(images), -1, np.int64)
        emb_row[valid] = np.arange(int(valid.sum()))
        nodes = res.nodes
        nodes_out = pd.DataFrame(
            {
                "image_id": images.id.to_numpy(np.int64),
                "path": paths,
                "sha256": images.sha256.to_numpy(dtype=object),
                "identity": images.identity.to_numpy(dtype=object),
                "is_fake": images.is_fake.to_numpy().astype(bool),
                "status": status_arr,
                "component": nodes.component.to_numpy(np.int32),
                "degree": nodes.degree.to_numpy(np.int32),
                "sim_to_main": nodes.sim_to_main.to_numpy(np.float32),
                "best_to_main": nodes.best_to_main.to_numpy(np.float32),
                "p_wrong": nodes.p_wrong.to_numpy(np.float32),
                "suggested_identity": nodes.suggested_identity.to_numpy(dtype=object),
                "flags": nodes["flags"].to_numpy(dtype=object),
                "emb_row": emb_row,
            }
        )
        write_nodes(folder, nodes_out)
        embeddings.result()
    timings["write"] = round(time.perf_counter() - t0, 3)

    counts = Counter(flags_df.flag)
    ident = res.identities
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **report_extra,
        "n_images": int(len(images)),
        "n_embedded": int(valid.sum()),
        "n_identities": int(len(ident)),
        "n_single_photo_identities": int((ident.n_real == 1).sum()),
        "counts": {k: int(counts.get(k, 0)) for k in sorted(counts)},
        "thresholds": res.thresholds,
        "noise_rate": res.noise,
        "graphs": {
            "identities_proven_connected": int((ident.via == "proof").sum()),
            "identities_via_networkx": int((ident.via == "networkx").sum()),
        },
        "similarity_histogram": res.histogram,
        "timings": timings,
        "messages": messages,
    }
    write_report(folder, report)
    return CleanOutcome(work, report, flags_df, messages)


def clean_embeddings(
    emb_path: str | Path, index_path: str | Path, workdir: str | Path, *, config: FlagConfig | None = None,
    device: str = "auto", progress: bool = True,
) -> CleanOutcome:
    """Flag precomputed embeddings (see the module docstring for how the store is filled)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    emb, index, messages = load_index(emb_path, index_path)
    ok_rows = np.flatnonzero(index.ok.to_numpy())
    # an empty store will hold exactly the index's usable rows, numbered 1, 2, ... in order: the flagging need not wait
    # for the fill (SQLite does most of it without holding the GIL, on the core the streaming passes leave free)
    with LabelStore.open(work) as store, ThreadPoolExecutor(1) as background:  # the fill ends before the store closes
        filling = None
        if store.is_empty():
            filling = background.submit(fill_store_from_index, store, index, Path(index_path).parent)
            listed = index.iloc[ok_rows]
            images = pd.DataFrame({"id": np.arange(1, len(ok_rows) + 1), "path": listed.image.to_numpy(),
                                   "sha256": None, "identity": listed.identity.to_numpy(),
                                   "is_fake": listed.is_fake.to_numpy(np.int64)})
            rows = ok_rows
        else:
            fill_store_from_index(store, index, Path(index_path).parent)
            images = store.images(present_only=True, include_removed=False, columns=CLEAN_COLUMNS)
            src = pd.Index(index.image.to_numpy()[ok_rows]).get_indexer(images.path)  # each image's index row, or -1
            unknown = src < 0
            if unknown.any():
                messages.append(
                    f"{int(unknown.sum())} image(s) in the store are not in {index_path}: left out of this clean"
                )
                images = images[~unknown].reset_index(drop=True)
                src = src[~unknown]
            rows = ok_rows[src]
        sub = take_rows(emb, rows)  # the memory map itself when the store lists the index's rows in order
        finite = np.ones(len(sub), bool)
        step = slice_rows(sub.shape[1], STREAM_BUDGET)  # small slices: 3x faster than 256k rows (see slice_rows)
        for s in range(0, len(sub), step):
            finite[s : s + step] = np.isfinite(sub[s : s + step]).all(1)
        if not finite.all():
            messages.append(f"{int((~finite).sum())} embedding row(s) hold NaN or inf: left out of the graphs")
        status = np.full(len(sub), "ok", dtype=object)  # not np.where: that builds N x 40 characters (1.6 GB at 10M)
        status[~finite] = "invalid: the embedding holds NaN or inf"
        timings["load"] = round(time.perf_counter() - t0, 3)
        return _flag_and_write(
            store, work, images, sub, status, config=config or FlagConfig(), device=device,
            progress=progress, report_extra={"mode": "embeddings", "embeddings": str(emb_path), "index": str(index_path)},
            timings=timings, messages=messages, filling=filling,
        )


def clean_dataset(
    data: str | Path,
    workdir: str | Path,
    *,
    model: str = "dlib",
    device: str = "auto",
    flip: bool = False,
    options: EmbedOptions | None = None,
    config: FlagConfig | None = None,
) -> CleanOutcome:
    """Ingest DATA into WORK, align and embed every readable photo (cached), flag, and write the outputs.

    model, device, flip: the embedder (`curation.cli.build_embedder`).
    options: how the embedding pass runs (detector, --aligned, workers, engine, progress bars; see
    `embeddings.pipeline.embed_images`); default `EmbedOptions()`."""
    from embeddings.pipeline import embed_images

    options = options or EmbedOptions()
    progress = options.progress
    from labels.ingest import ingest

    work = Path(workdir)
    timings: dict[str, float] = {}
    messages: list[str] = []
    t0 = time.perf_counter()
    summary = ingest(data, work, progress=progress)
    print(summary.report())
    timings["ingest"] = round(time.perf_counter() - t0, 3)
    embedder = build_embedder(model, device, flip)
    with LabelStore.open(work) as store:
        images = store.images(present_only=True, include_removed=False)
        if images.empty:
            raise UserError(f"{data}: no photos to clean (empty folders, or every photo removed by a reviewer)")
        root = store.dataset_root
        readable = images.problem.isna().to_numpy()
        t0 = time.perf_counter()
        result = embed_images(
            [root / p for p in images.path[readable]], embedder, cache_dir=work / "cache",
            keys=list(images.sha256[readable]), options=options,
        )
        timings["align_embed"] = round(time.perf_counter() - t0, 3)
        print(f"embedding ({embedder.id}): {result.summary()}")
        emb = np.full((len(images), result.embeddings.shape[1]), np.nan, np.float32)
        emb[readable] = result.embeddings
        status = np.array([f"unreadable_at_ingest: {p}" for p in images.problem.fillna("")], dtype=object)
        status[readable] = result.status
        n_noface = sum(s.startswith(("no_face", "bad_size")) for s in result.status)
        if n_noface:
            messages.append(f"{n_noface} photo(s) without a usable face: flagged no_face, left out of the graphs")
        weak = np.zeros(len(images), bool)
        weak[readable] = np.array(result.method) == "center_crop"
        if weak.any():
            messages.append(f"{int(weak.sum())} face-crop photo(s) where no face was found, or only a bystander's "
                            f"off-centre one: {WEAK}; flagged weak_alignment")
        return _flag_and_write(
            store, work, images, emb, list(status), config=config or FlagConfig(), device=device, progress=progress,
            report_extra={
                "mode": "images", "dataset": str(root), "model": model, "embedder_id": embedder.id,
                "align_id": result.align_id, "embedding_status": dict(result.counts()),
                "embedding_processes": result.embed_processes, "weak_alignment": int(weak.sum()),
            },
            timings=timings, messages=messages, weak=weak,
        )


# ---- terminal ----------------------------------------------------------------------------------------------------------
def format_summary(outcome: CleanOutcome) -> str:
    r = outcome.report
    edge = r["thresholds"]["edge"]
    lines = [
        f"cleaned {r['n_images']:,} photos ({r['n_embedded']:,} embedded) in {r['n_identities']:,} identities",
        f"edge threshold: {edge['description']}",
        f"duplicate threshold: {r['thresholds']['duplicate']['value']:.4f}; merge: cross-edge share >= "
        f"{r['thresholds']['merge']['value']:.2f} and cross cosines >= {r['thresholds']['merge']['ratio']:.2f} of the way"
        " from impostors to the identities' own",
        "flags: " + (", ".join(f"{n:,} {k}" for k, n in sorted(r["counts"].items(), key=lambda kv: -kv[1])) or "none"),
    ]
    noise_rate = r["noise_rate"]
    if noise_rate.get("overall") is not None:
        worst = [(k, v) for k, v in sorted(noise_rate["per_identity"].items(), key=lambda kv: -kv[1])[:5] if v > 0]
        most = f" (most: {', '.join(f'{k} {100 * v:.0f}%' for k, v in worst)})" if worst else ""
        lines.append(f"estimated label noise: {100 * noise_rate['overall']:.1f}% of real photos{most}")
    lines += [f"note: {m}" for m in outcome.messages]
    t = r["timings"]
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    w = outcome.workdir
    lines.append(f"wrote {w / 'flags.csv'}, {w / 'report.json'}, {w / 'clean'}/ and the flags into {w / 'labels.sqlite'}")
    return "\n".join(lines)


def offer_review(work: Path) -> None:
    """Print the app command; ask to start it only when a person is at the terminal (default no)."""
    cmd = REVIEW_COMMAND.format(work=work)
    print(f"review the flags: {cmd}")
    if not sys.stdin.isatty():
        return
    try:
        answer = input("start the review app now? [y/N] ").strip().lower()
    except EOFError:
        return
    if answer in ("y", "yes"):
        app = Path(__file__).resolve().parents[1] / "app.py"
        subprocess.run([sys.executable, "-m", "streamlit", "run", str(app), "--", "--workdir", str(work)], check=False)


def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        "python -m curation.clean",
        "Flag mislabelled photos, duplicates, merged/split identities and mismatched deepfakes in a "
        "face dataset. Nothing is removed: flags are proposals for the review app or export.",
        EPILOG,
    )
    p.add_argument("data", nargs="?", help="dataset folder (identity folders [+ meta.json], or images/ + meta.json); "
                   "omit for the demo")
    p.add_argument("--workdir", default="work", help="work folder: label store, caches, outputs (default: ./work)")
    m = add_embedding_options(p, None)  # the cache is WORKDIR/cache
    m.add_argument("--engine", choices=ENGINES, default="local",
                   help="where the embedding pass runs: local (this machine) or ray (a Ray cluster: pip install -r "
                   "requirements-ray.txt; photos and WORKDIR on a filesystem every node sees)")
    m.add_argument("--ray-address", help="with --engine ray: auto (the cluster this machine joined), ray://HEAD:10001, "
                   "or none to start Ray on this machine (default: $RAY_ADDRESS if set)")
    g = p.add_argument_group("flagging")
    g.add_argument("--threshold", type=float, help="edge threshold (cosine); default: calibrated from the data")
    g.add_argument("--target-fmr", type=float, default=DEFAULT_TARGET_FMR,
                   help=f"false-match rate the calibrated edge threshold allows (default {DEFAULT_TARGET_FMR:g})")
    g.add_argument("--split-ratio", type=float, default=FlagConfig.split_ratio,
                   help="2nd component / largest at which an identity is flagged split")
    g.add_argument("--merge-ratio", type=float, default=FlagConfig.merge_ratio,
                   help="how close two identities' cross cosines come to their own, from the impostor mean (0) to"
                   " their own level (1), for a merge flag")
    g.add_argument("--faiss-index", metavar="FACTORY",
                   help="faiss index_factory string for the identity centroids, e.g. IVF4000,SQ8 or HNSW32 "
                   "(default: chosen by size: Flat, IVF over float16 rows, IVF+SQ8)")
    g.add_argument("--chunk-rows", type=int, default=FlagConfig.chunk_rows, metavar="N",
                   help="photos per chunk of identities in the graph stage: bounds memory, does not change results "
                   "(default: %(default)s)")
    e = p.add_argument_group("precomputed embeddings")
    e.add_argument("--embeddings", help="EMB.npy, N x D float32/float16 (with --index)")
    e.add_argument("--index", help="INDEX.csv: image,identity[,is_fake], row i describes row i of EMB.npy")
    d = p.add_argument_group("demo and planted noise")
    d.add_argument("--from", dest="from_dir", help="demo photos from this folder of identity folders instead of LFW")
    d.add_argument("--plant-noise", action="store_true", help="DATA is clean: plant noise in a copy, clean it, score it")
    d.add_argument("--demo-identities", type=int, default=100, help="identities (10+ photos) used by the demo (100)")
    d.add_argument("--noisy-dir", help="where the noisy copy goes (default: WORKDIR-data, beside the work folder)")
    d.add_argument("--seed", type=int, default=0)
    return p


def _config(args) -> FlagConfig:
    if not 0 < args.target_fmr < 1:
        raise UserError(f"--target-fmr must be between 0 and 1, got {args.target_fmr}")
    if args.chunk_rows < 1:
        raise UserError(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
    return FlagConfig(threshold=args.threshold, target_fmr=args.target_fmr, split_ratio=args.split_ratio,
                      merge_ratio=args.merge_ratio, seed=args.seed, faiss_index=args.faiss_index,
                      chunk_rows=args.chunk_rows)


def _run_planted(args, work: Path, progress: bool) -> int:
    if args.plant_noise:
        source = Path(args.data)
    elif args.from_dir:
        source = Path(args.from_dir)
    else:
        try:
            source = fetch_lfw(progress=progress)
        except DownloadError as exc:
            raise UserError(f"offline? {exc}. Point the demo at local photos: python -m curation.clean --from DIR "
                            "(a folder of identity folders), or clean your own dataset: python -m curation.clean DATA"
                            ) from None
    if not source.is_dir():
        raise UserError(f"{source}: not a folder of identity folders")
    noisy = Path(args.noisy_dir) if args.noisy_dir else Path(str(work.resolve()) + "-data")
    truth_path = noisy / noise.TRUTH_NAME
    if truth_path.is_file():
        print(f"using the noisy copy made earlier: {noisy}")
    else:
        print(f"planting noise: {source} -> {noisy}")
        noise.plant(source, noisy, min_photos=10, max_photos=40, max_identities=args.demo_identities, seed=args.seed)
    truth = json.loads(truth_path.read_text())
    outcome = clean_dataset(noisy, work, model=args.model, device=args.device, flip=args.flip,
                            options=embed_options(args), config=_config(args))
    print(format_summary(outcome))
    scores = noise.score(outcome.flags, truth)
    sample = review_sample(work, truth, outcome.report, seed=args.seed)
    outcome.report["planted_noise"] = {**scores, "review_sample": sample.to_dict()}
    write_report(WorkFolder(work), outcome.report)
    print("\nhow the flags matched the planted noise:")
    print(noise.format_score(scores))
    print(f"a reviewer who answers {sample.n_answered} flags the review queue picks (order: information; simulated, "
          f"answers = the planted truth): estimated precision of the {sample.estimate.n_flags} flags left open "
          f"{_pct(sample.estimate.precision)} (95% CI {_pct(sample.estimate.low)}-{_pct(sample.estimate.high)}); "
          f"their true precision {_pct(sample.truth)}")
    offer_review(work)


REVIEW_SAMPLE = 60  # answers the demo's simulated reviewer gives


def review_sample(work: Path, truth: dict, report: dict, *, seed: int = 0) -> SimulatedReview:
    """What a reviewer would learn from REVIEW_SAMPLE answers in the queue's information order, beside the truth
    (curation.review.simulate; nothing is written to the store)."""
    with LabelStore.open(work) as store:
        flags = store.flags()
    return simulate_review(flags, noise.flag_truth(flags, truth), summarize_report(report), budget=REVIEW_SAMPLE,
                           seed=seed)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _run(args: argparse.Namespace) -> int:
    work = Path(args.workdir)
    progress = not args.no_progress
    if args.embeddings or args.index:
        if not (args.embeddings and args.index):
            raise UserError("--embeddings and --index go together (row i of INDEX.csv describes row i of EMB.npy)")
        if args.data:
            raise UserError("give either a dataset folder or --embeddings/--index, not both")
        outcome = clean_embeddings(args.embeddings, args.index, work, config=_config(args), device=args.device,
                                   progress=progress)
    elif args.data is None or args.plant_noise:
        return _run_planted(args, work, progress)
    elif not Path(args.data).is_dir():
        raise UserError(f"{args.data}: not a folder")
    else:
        outcome = clean_dataset(args.data, work, model=args.model, device=args.device, flip=args.flip,
                                options=embed_options(args), config=_config(args))
    print(format_summary(outcome))
    offer_review(work)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(_parser(), argv, _run, interrupted=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(main())
