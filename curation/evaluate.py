"""`python -m curation.evaluate`: score a submission against ground truth, or compare the metrics of several runs.

Why: the question after cleaning and fine-tuning is "did the EER move, and for which kind of pair?". This command gives
the same numbers the challenge computed (its EER beside the bob.measure one), writes them where the review app's
Evaluation tab and `--compare` find them, and turns a mis-ordered or broken submission into a clear message instead of
a silently wrong score.

Modes:
- `--scores SUBMISSION.csv --truth TRUTH.csv --out DIR`: `pair_id,similarity` against `pair_id,label[,type]`, joined by
  pair_id. The organisers' scorer paired rows by *position*; when the submission's order differs from the truth's, this
  command says so (the challenge would have scored that file wrongly) and still scores it by pair_id.
- `--pairs PAIRS.csv --model SPEC --root DIR --out DIR`: a model on labelled image pairs (`img1,img2,label[,type]`,
  paths relative to --root, refused when they leave it). Each distinct image is aligned and embedded once through the
  cached embedding pass, pairs are scored by cosine (`curation.predict.score_pairs`, the scoring `curation.predict`
  uses). Pairs with an image that could not be embedded (missing, unreadable, no face found) are *excluded* from the
  metrics: they are counted, the first few named, all listed in DIR/excluded_pairs.csv and counted in metrics.json's
  source. (A submission would give them a fallback score; here that would measure the fallback, not the model.)
- `--compare RUN ...`: one table of several runs' metrics (folders holding metrics.json, or training run folders holding
  performance_history.json, whose best validation is used unless `--pick last`).

Every mode that scores pairs ends in `evaluate_scores(scores, labels, out_dir, ...)`, which writes DIR/metrics.json,
DIR/scores.csv and the ROC, DET and score plots.

Example:
    >>> result = evaluate_scores(scores, labels, Path("eval/run1"), types=types, ids=pd.DataFrame({"pair_id": ids}))
    >>> print(result.report.describe())
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from curation import plots
from curation.metrics import DEFAULT_FARS, Curve, VerificationReport, verification_report
from curation.pairs import PAIR_KINDS, SAME

METRICS_NAME = "metrics.json"
HISTORY_NAME = "performance_history.json"

EPILOG = """examples:
  # score a submission with the challenge's metrics (rows joined by pair_id; a warning when the order differs from
  # TRUTH's, as the organisers' scorer paired rows by position); per-type rates when TRUTH has a type column
  python -m curation.evaluate --scores submission.csv --truth test_public_truth.csv --out eval/submission1

  # the same, reporting accuracy and per-type rates at a threshold chosen on validation data
  python -m curation.evaluate --scores submission.csv --truth truth.csv --out eval/s1 --threshold 0.23

  # a model on labelled pairs (img1,img2,label[,type], paths relative to --root): embeds each image once (cached)
  python -m curation.evaluate --pairs pairs.csv --root photos --model ir:ir_101:adaface.ckpt --out eval/pretrained

  # the same with an exported ONNX model on photos that already are ArcFace-template crops, sharing a cache
  python -m curation.evaluate --pairs val.csv --root crops --model onnx:ir101.onnx --aligned --out eval/onnx \\
      --cache work/cache

  # one table of several runs: evaluation folders (metrics.json) and training runs (performance_history.json)
  python -m curation.evaluate --compare eval/pretrained eval/finetuned runs/noisy runs/cleaned

  # ... also written as compare.csv, compare.md and overlaid ROC/DET plots
  python -m curation.evaluate --compare eval/pretrained eval/finetuned --out eval/comparison

files: SUBMISSION.csv has columns pair_id,similarity (higher = same person); TRUTH.csv has pair_id,label (1 same person,
0 not) and optionally type (e.g. same, different, own_fake). PAIRS.csv has img1,img2,label[,type]; pairs whose image
cannot be embedded (missing, unreadable, no face) are left out of the metrics, named in the summary and listed in
DIR/excluded_pairs.csv. Other columns are ignored. Exit code 2 means bad input.
"""


class InputError(Exception):
    """A problem with the user's files or arguments: printed as one line, exit code 2."""


@dataclass
class EvaluationOutput:
    """What `evaluate_scores` measured and wrote, and notes for the user (e.g. a skipped PNG)."""

    report: VerificationReport
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@contextmanager
def _replacing(path: Path):
    """A temporary path beside `path`, moved into place afterwards: readers (the app) never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    yield tmp
    os.replace(tmp, path)


def evaluate_scores(
    scores,
    labels,
    out_dir: Path,
    *,
    types=None,
    ids: pd.DataFrame | None = None,
    threshold: float | None = None,
    fars=DEFAULT_FARS,
    source: dict | None = None,
) -> EvaluationOutput:
    """Measure scored pairs and write the evaluation folder: the one seam every scoring mode ends in.

    Inputs: per-pair `scores` and 0/1 `labels` (same order), optional per-pair `types` names, optional `ids` (a table of
    identifying columns, e.g. pair_id or img1,img2, one row per pair, written in front of scores.csv), an operating
    `threshold` (default: the EER threshold), target FARs, and `source` (what was scored; stored in metrics.json).
    Output: EvaluationOutput. Writes `out_dir/metrics.json` (VerificationReport.to_dict() + source + time),
    `scores.csv`, and `roc`, `det`, `scores` plots (.html, .png where kaleido works). Raises ValueError for bad arrays.

    Example:
        >>> out = evaluate_scores([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], Path("eval/demo"))
        >>> out.report.eer, [p.name for p in out.files][:2]
        (0.5, ['metrics.json', 'scores.csv'])
    """
    report = verification_report(scores, labels, types, threshold=threshold, fars=fars)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = report.to_dict()
    record["source"] = source or {}
    record["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    metrics_path = out_dir / METRICS_NAME
    with _replacing(metrics_path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n", encoding="utf-8")

    table = pd.DataFrame({"similarity": np.asarray(scores, dtype=np.float64), "label": np.asarray(labels).astype(int)})
    if types is not None:
        table["type"] = np.asarray(types)
    if ids is not None:
        table = pd.concat([ids.reset_index(drop=True), table], axis=1)
    scores_path = out_dir / "scores.csv"
    with _replacing(scores_path) as tmp:
        table.to_csv(tmp, index=False)

    files, notes = [metrics_path, scores_path], []
    name = out_dir.resolve().name
    mark = {name: (report.eer_far, report.eer_frr)}
    for stem, fig in (
        ("roc", plots.roc_figure({name: report.curve}, marks=mark)),
        ("det", plots.det_figure({name: report.curve}, marks=mark)),
        ("scores", plots.score_histogram(scores, labels, types, threshold=report.threshold)),
    ):
        written, note = plots.save_figure(fig, out_dir / stem)
        files += written
        if note and note not in notes:
            notes.append(note)
    return EvaluationOutput(report, files, notes)


# ---------------------------------------------------------------------------------------------------------- reading


def read_csv_table(path: Path, required: tuple[str, ...], *, id_column: str | None = "pair_id") -> pd.DataFrame:
    """All columns as stripped text, with the `required` columns and (unless id_column is None) unique, non-empty ids;
    InputError naming the file and the reason otherwise."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a CSV file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file") from None
    except pd.errors.ParserError as exc:
        raise InputError(f"{path}: not a valid CSV ({str(exc).strip().splitlines()[-1]})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text (is it a CSV file?)") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(df.columns)})")
    if df.empty:
        raise InputError(f"{path}: no rows after the header")
    for c in df.columns:
        df[c] = df[c].str.strip()
    if id_column is None:
        return df
    ids = df[id_column]
    if (ids == "").any():
        raise InputError(
            f"{path}: empty {id_column} in {int((ids == '').sum())} row(s), first at {_where(df, ids == '')}"
        )
    dup = ids.duplicated(keep=False)
    if dup.any():
        first = ids[dup].iloc[0]
        raise InputError(
            f"{path}: {ids[dup].nunique()} {id_column}(s) appear more than once, e.g. {first!r} at rows "
            f"{', '.join(str(i + 1) for i in np.flatnonzero(ids == first)[:5])}"
        )
    return df


def _where(df: pd.DataFrame, mask) -> str:
    """'row N (pair_id X)' for the first row where the boolean mask holds; rows count from 1 after the header.
    Tables without pair_ids (pairs of images) are named by their img1."""
    i = int(np.argmax(np.asarray(mask)))
    column = "pair_id" if "pair_id" in df.columns else "img1"
    return f"row {i + 1} ({column} {df[column].iloc[i]!r})"


def _numbers(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    text = df[column]
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    nan = np.isnan(values)
    blank = nan & text.str.lower().isin(["", "nan", "na", "n/a", "null", "none"]).to_numpy()
    non_numeric = nan & ~blank
    if non_numeric.any():
        raise InputError(f"{path}: {int(non_numeric.sum())} non-numeric {column} value(s), first "
                         f"{text.iloc[int(np.argmax(non_numeric))]!r} at {_where(df, non_numeric)}")
    if blank.any():
        raise InputError(f"{path}: {int(blank.sum())} empty or NaN {column} value(s), first at {_where(df, blank)}")
    inf = np.isinf(values)
    if inf.any():
        raise InputError(f"{path}: {int(inf.sum())} infinite {column} value(s), first at {_where(df, inf)}")
    return values


def read_submission(path: Path) -> pd.DataFrame:
    """`pair_id` (text, as written: leading zeros kept) and `similarity` (finite float); InputError otherwise."""
    df = read_csv_table(path, ("pair_id", "similarity"))
    return pd.DataFrame({"pair_id": df["pair_id"], "similarity": _numbers(df, "similarity", path)})


def read_truth(path: Path) -> pd.DataFrame:
    """`pair_id`, `label` (0/1 int) and, when the file has one, `type` (non-empty text); InputError otherwise."""
    df = read_csv_table(path, ("pair_id", "label"))
    return pd.concat([df[["pair_id"]], read_labels(df, path)], axis=1)


def read_labels(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """`label` (0/1 int8) and, when the table has one, `type` (non-empty text) of a table read by read_csv_table."""
    labels = _numbers(df, "label", path)
    wrong = (labels != 0) & (labels != 1)
    if wrong.any():
        raise InputError(f"{path}: label must be 0 or 1, found {df['label'].iloc[int(np.argmax(wrong))]!r} at "
                         f"{_where(df, wrong)} ({int(wrong.sum())} such row(s))")
    out = pd.DataFrame({"label": labels.astype(np.int8)})
    if "type" in df.columns:
        empty = df["type"] == ""
        if empty.any():
            raise InputError(f"{path}: empty type in {int(empty.sum())} row(s), first at {_where(df, empty)}")
        out["type"] = df["type"]
    return out


def _examples(ids, n: int = 3) -> str:
    ids = list(ids)
    return ", ".join(repr(i) for i in ids[:n]) + (", ..." if len(ids) > n else "")


def join_by_pair_id(
    sub: pd.DataFrame, truth: pd.DataFrame, sub_path: Path, truth_path: Path
) -> tuple[pd.DataFrame, str | None]:
    """The submission's similarity for each truth row, in the truth's order; plus a warning when the orders differ.

    Raises InputError when an id is missing from the submission or the submission has ids the truth lacks.
    """
    sub_ids = pd.Index(sub["pair_id"])
    pos = sub_ids.get_indexer(truth["pair_id"])
    missing = truth["pair_id"][pos < 0]
    extra = sub_ids.difference(pd.Index(truth["pair_id"]), sort=False)
    if len(missing) or len(extra):
        parts = []
        if len(missing):
            parts.append(f"lacks {len(missing):,} pair_id(s) of {truth_path} ({_examples(missing)})")
        if len(extra):
            parts.append(f"has {len(extra):,} pair_id(s) not in {truth_path} ({_examples(extra)})")
        hint = ""
        if len(missing) == len(truth) and set(sub_ids.str.lstrip("0")) == set(truth["pair_id"].str.lstrip("0")):
            hint = "; the ids match only without leading zeros (was the file saved by a spreadsheet?)"
        raise InputError(f"{sub_path}: " + " and ".join(parts) + hint)
    joined = truth.copy()
    joined["similarity"] = sub["similarity"].to_numpy()[pos]
    warning = None
    if not np.array_equal(pos, np.arange(len(pos))):
        row = int(np.argmax(pos != np.arange(len(pos)))) + 1
        warning = (f"warning: {sub_path} is not in the order of {truth_path} (first difference at row {row}); "
                   "scored by pair_id. The organisers' scorer pairs rows by position and would have scored this file "
                   "wrongly.")
    return joined, warning


# -------------------------------------------------------------------------------------------------------- comparing


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def _history_records(data, path: Path) -> list[dict]:
    """The validation records of a performance_history.json (a list, or a mapping holding one under records/history)."""
    if isinstance(data, dict):
        data = data.get("records", data.get("history"))
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of validation records")
    records = []
    for rec in data:
        if isinstance(rec, dict):
            metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else rec
            if isinstance(metrics.get("eer"), (int, float)):
                records.append({**metrics, "step": rec.get("step")})
    if not records:
        raise InputError(f"{path}: no validation record with an eer yet")
    return records


def load_run(path: Path, pick: str = "best") -> tuple[str, dict]:
    """(display name, metrics mapping) of one run: an evaluation folder or metrics.json, or a training run folder or
    its performance_history.json (the record with the lowest eer for pick="best", the latest for pick="last")."""
    path = Path(path)
    if path.is_dir():
        if (path / METRICS_NAME).is_file():
            path = path / METRICS_NAME
        elif (path / HISTORY_NAME).is_file():
            path = path / HISTORY_NAME
        else:
            raise InputError(f"{path}: neither {METRICS_NAME} nor {HISTORY_NAME} found")
    elif not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    name = path.parent.name or str(path.parent)
    data = _load_json(path)
    if isinstance(data, dict) and isinstance(data.get("eer"), (int, float)):
        return name, data
    records = _history_records(data, path)
    if pick == "best":
        rec = min(records, key=lambda r: r["eer"])
    else:
        rec = records[-1]
    return (f"{name} (step {rec['step']}, {pick})" if rec.get("step") is not None else f"{name} ({pick})"), rec


def metrics_row(metrics: dict) -> dict[str, float | int | None]:
    """The comparable numbers of one metrics mapping, as flat table columns (missing ones are simply absent)."""
    row: dict[str, float | int | None] = {}
    if metrics.get("step") is not None:
        row["step"] = metrics["step"]
    for key in ("eer", "eer_threshold", "eer_roc", "accuracy"):
        if key in metrics:
            row[key] = metrics[key]
    for far, tar in (metrics.get("tar_at_far") or {}).items():
        row[f"TAR@FAR={far}"] = tar
    for name, r in (metrics.get("per_type") or {}).items():
        if isinstance(r, dict):
            suffix = {"false_reject": "FRR", "false_accept": "FAR"}.get(r.get("kind"), "error")
            row[f"{name} {suffix}"] = r.get("rate")
        else:  # a plain rate, as training records store them, named by curation.pairs' kinds: only "same" is positive
            row[f"{name} {'FRR' if name == PAIR_KINDS[SAME] else 'FAR'}"] = r
    for key in ("n_pos", "n_neg"):
        if key in metrics:
            row[key] = metrics[key]
    return row


def compare_table(paths: list[Path], pick: str = "best") -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per run (index: run name), columns in first-seen order; also name -> the run's metrics mapping."""
    runs: dict[str, dict] = {}
    for p in paths:
        name, metrics = load_run(p, pick)
        if name in runs:
            name = str(p)
        runs[name] = metrics
    rows = {name: metrics_row(m) for name, m in runs.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    # first-seen order, except that the step leads and the pair counts close the row
    rank = {"step": -1, "n_pos": 1, "n_neg": 2}
    table = table[sorted(table.columns, key=lambda c: rank.get(c, 0))]
    table.index.name = "run"
    return table, runs


_COUNT_COLUMNS = ("step", "n_pos", "n_neg")


def _cell(column: str, v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if not isinstance(v, (int, float, np.integer, np.floating)):
        return str(v)
    if column in _COUNT_COLUMNS:
        return f"{int(v):,}"
    return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"


def format_table(table: pd.DataFrame, markdown: bool = False) -> str:
    """The table as aligned text (or markdown): 4 decimals, '-' for values a run lacks."""
    header = [table.index.name or ""] + list(table.columns)
    body = [[str(i)] + [_cell(c, v) for c, v in zip(table.columns, row)]
            for i, row in zip(table.index, table.itertuples(index=False))]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n"
    widths = [max(len(r[j]) for r in [header] + body) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header)] + [line(r) for r in body])


# ----------------------------------------------------------------------------------------------------------- the CLI


def _parser() -> argparse.ArgumentParser:
    from curation.predict import add_embedding_options  # imports torch: not at module level (and predict imports us)

    p = argparse.ArgumentParser(
        prog="python -m curation.evaluate",
        description="Score a submission against ground truth, or a model on labelled image pairs (EER in the "
        "bob.measure and the organisers' conventions, TAR@FAR, per-type error rates, ROC/DET plots), or compare "
        "several runs in one table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--scores", type=Path, metavar="SUBMISSION.csv",
                      help="pair_id,similarity to score (needs --truth and --out)")
    mode.add_argument("--pairs", type=Path, metavar="PAIRS.csv",
                      help="img1,img2,label[,type] to score with --model (needs --out; paths relative to --root)")
    mode.add_argument("--compare", type=Path, nargs="+", metavar="RUN",
                      help="evaluation folders (metrics.json) or training run folders (performance_history.json)")
    p.add_argument("--truth", type=Path, metavar="TRUTH.csv", help="pair_id,label[,type] for --scores")
    p.add_argument("--root", type=Path, metavar="DIR",
                   help="the folder --pairs' image paths are relative to (default: the CSV's folder)")
    p.add_argument("--out", type=Path, metavar="DIR", help="where to write (required with --scores and --pairs; with "
                   "--compare: compare.csv/.md and overlaid plots)")
    p.add_argument("--threshold", type=float,
                   help="operating threshold for accuracy and per-type rates (default: the EER threshold)")
    p.add_argument("--pick", choices=("best", "last"), default="best",
                   help="which validation of a training run to compare (default: best, the lowest eer)")
    add_embedding_options(p, "DIR/cache inside --out")
    return p


def _check_threshold(args) -> None:
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise InputError(f"--threshold must be a finite number, got {args.threshold}")


def _print_evaluation(out: EvaluationOutput) -> None:
    print(out.report.describe())
    print(f"wrote {', '.join(str(f) for f in out.files)}")
    for note in out.notes:
        print(f"note: {note}")


def _run_scores(args) -> int:
    if args.truth is None or args.out is None:
        raise InputError("--scores needs --truth TRUTH.csv and --out DIR")
    _check_threshold(args)
    sub = read_submission(args.scores)
    truth = read_truth(args.truth)
    joined, warning = join_by_pair_id(sub, truth, args.scores, args.truth)
    if warning:
        print(warning, file=sys.stderr)
    try:
        out = evaluate_scores(
            joined["similarity"].to_numpy(), joined["label"].to_numpy(), args.out,
            types=joined["type"].to_numpy() if "type" in joined else None,
            ids=joined[["pair_id"]], threshold=args.threshold,
            source={"mode": "scores", "submission": str(args.scores), "truth": str(args.truth),
                    "order_matches_truth": warning is None},
        )
    except ValueError as exc:  # e.g. the truth holds only one label
        raise InputError(f"{args.truth}: {exc}") from None
    print(f"scored {args.scores} against {args.truth}")
    _print_evaluation(out)
    return 0


EXCLUDED_NAME = "excluded_pairs.csv"
EXCLUDED_POLICY = ("pairs with an image that could not be embedded (missing, unreadable, no face found) are excluded "
                   f"from the metrics and listed in {EXCLUDED_NAME}")


def _run_pairs(args) -> int:
    from curation.predict import build_embedder, check_embedding_options, read_pairs, score_pairs
    from embeddings.detectors import DetectorError

    if args.out is None:
        raise InputError("--pairs needs --out DIR")
    _check_threshold(args)
    check_embedding_options(args)
    root = args.root if args.root is not None else args.pairs.parent
    pairs = read_pairs(args.pairs, root, ("img1", "img2", "label"), id_column=None)
    labelled = read_labels(pairs, args.pairs)
    embedder = build_embedder(args.model, args.device)
    try:
        scored = score_pairs(root, pairs["img1"], pairs["img2"], embedder, cache_dir=args.cache or args.out / "cache",
                             detector=args.detector, aligned=args.aligned, batch_size=args.batch_size,
                             workers=args.workers, progress=not args.no_progress)
    except DetectorError as exc:  # a bad --detector spec or model file
        raise InputError(str(exc)) from None
    print(f"embedding ({scored.cache_id}): {scored.summary}")
    ok = ~np.isnan(scored.similarity)
    bad = scored.problems["pair"].to_numpy(np.int64)  # one row per image without an embedding
    excluded = pd.concat([pairs[["img1", "img2"]].iloc[bad].reset_index(drop=True),
                          labelled.iloc[bad].reset_index(drop=True), scored.problems[["image", "status"]]], axis=1)
    args.out.mkdir(parents=True, exist_ok=True)
    with _replacing(args.out / EXCLUDED_NAME) as tmp:
        excluded.to_csv(tmp, index=False)
    if not ok.all():
        print(f"{scored.describe_problems()}: excluded from the metrics, listed in {args.out / EXCLUDED_NAME}")
    source = {"mode": "pairs", "pairs": str(args.pairs), "root": str(root), "model": args.model,
              "embedding": scored.cache_id, "n_pairs": len(pairs), "n_excluded": int((~ok).sum()),
              "excluded_policy": EXCLUDED_POLICY}
    try:
        out = evaluate_scores(
            scored.similarity[ok], labelled["label"].to_numpy()[ok], args.out,
            types=labelled["type"].to_numpy()[ok] if "type" in labelled else None,
            ids=pairs.loc[ok, ["img1", "img2"]], threshold=args.threshold, source=source,
        )
    except ValueError as exc:  # e.g. only one label among the pairs left
        raise InputError(f"{args.pairs}: {exc}" + (f" ({int((~ok).sum())} pair(s) excluded)" if not ok.all() else "")
                         ) from None
    print(f"scored {int(ok.sum()):,} pairs of {args.pairs} with {args.model}")
    _print_evaluation(out)
    return 0


def _run_compare(args) -> int:
    table, runs = compare_table(args.compare, args.pick)
    print(format_table(table))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with _replacing(args.out / "compare.csv") as tmp:
            table.to_csv(tmp)
        with _replacing(args.out / "compare.md") as tmp:
            tmp.write_text(format_table(table, markdown=True), encoding="utf-8")
        written = [args.out / "compare.csv", args.out / "compare.md"]
        curves = {name: Curve.from_dict(m["curve"]) for name, m in runs.items() if isinstance(m.get("curve"), dict)}
        notes = []
        if curves:
            marks = {name: (runs[name]["eer_far"], runs[name]["eer_frr"]) for name in curves
                     if "eer_far" in runs[name] and "eer_frr" in runs[name]}
            figures = (("roc", plots.roc_figure(curves, marks=marks)), ("det", plots.det_figure(curves, marks=marks)))
            for stem, fig in figures:
                files, note = plots.save_figure(fig, args.out / stem)
                written += files
                if note and note not in notes:
                    notes.append(note)
        if len(curves) < len(runs):
            notes.append("runs without a stored curve (training histories) are in the table but not in the plots")
        print(f"wrote {', '.join(str(f) for f in written)}")
        for note in notes:
            print(f"note: {note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.scores is not None:
            return _run_scores(args)
        return _run_pairs(args) if args.pairs is not None else _run_compare(args)
    except KeyboardInterrupt:
        resume = ": run the same command again to resume (finished embeddings are cached)" if args.pairs else ""
        print(f"interrupted{resume}", file=sys.stderr)
        return 130
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # inputs were read already (their errors are InputErrors): this is the output folder
        print(f"error: {exc.filename or args.out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run the main of the module `curation.evaluate`, not of this `__main__` copy: curation.predict raises that module's
    # InputError, which this copy's `except InputError` would not catch.
    from curation.evaluate import main as module_main

    sys.exit(module_main())
