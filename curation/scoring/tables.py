"""Reading the CSV files users hand the scoring commands: submissions, ground truth, labelled pairs.

Why strict: a submission with a missing pair_id, a spreadsheet-mangled id or a NaN similarity would be scored wrongly
and silently. Every reader here names the file, the row and the reason instead, as a UserError (exit code 2).

Example:
    >>> sub = read_submission(Path("submission.csv"))       # pair_id (text, leading zeros kept), similarity (float)
    >>> truth = read_truth(Path("truth.csv"))                # pair_id, label (0/1)[, type]
    >>> joined, warning = join_by_pair_id(sub, truth, Path("submission.csv"), Path("truth.csv"))
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from labels.cli import UserError


def read_csv_table(path: Path, required: tuple[str, ...], *, id_column: str | None = "pair_id") -> pd.DataFrame:
    """All columns as stripped text, with the `required` columns and (unless id_column is None) unique, non-empty ids;
    UserError naming the file and the reason otherwise."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a CSV file") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty file") from None
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: not a valid CSV ({str(exc).strip().splitlines()[-1]})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (is it a CSV file?)") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(df.columns)})")
    if df.empty:
        raise UserError(f"{path}: no rows after the header")
    for c in df.columns:
        df[c] = df[c].str.strip()
    if id_column is None:
        return df
    ids = df[id_column]
    if (ids == "").any():
        raise UserError(
            f"{path}: empty {id_column} in {int((ids == '').sum())} row(s), first at {_where(df, ids == '')}"
        )
    dup = ids.duplicated(keep=False)
    if dup.any():
        first = ids[dup].iloc[0]
        raise UserError(
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
        raise UserError(f"{path}: {int(non_numeric.sum())} non-numeric {column} value(s), first "
                         f"{text.iloc[int(np.argmax(non_numeric))]!r} at {_where(df, non_numeric)}")
    if blank.any():
        raise UserError(f"{path}: {int(blank.sum())} empty or NaN {column} value(s), first at {_where(df, blank)}")
    inf = np.isinf(values)
    if inf.any():
        raise UserError(f"{path}: {int(inf.sum())} infinite {column} value(s), first at {_where(df, inf)}")
    return values


def read_submission(path: Path) -> pd.DataFrame:
    """`pair_id` (text, as written: leading zeros kept) and `similarity` (finite float); UserError otherwise."""
    df = read_csv_table(path, ("pair_id", "similarity"))
    return pd.DataFrame({"pair_id": df["pair_id"], "similarity": _numbers(df, "similarity", path)})


def read_truth(path: Path) -> pd.DataFrame:
    """`pair_id`, `label` (0/1 int) and, when the file has one, `type` (non-empty text); UserError otherwise."""
    df = read_csv_table(path, ("pair_id", "label"))
    return pd.concat([df[["pair_id"]], read_labels(df, path)], axis=1)


def read_labels(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """`label` (0/1 int8) and, when the table has one, `type` (non-empty text) of a table read by read_csv_table."""
    labels = _numbers(df, "label", path)
    wrong = (labels != 0) & (labels != 1)
    if wrong.any():
        raise UserError(f"{path}: label must be 0 or 1, found {df['label'].iloc[int(np.argmax(wrong))]!r} at "
                         f"{_where(df, wrong)} ({int(wrong.sum())} such row(s))")
    out = pd.DataFrame({"label": labels.astype(np.int8)})
    if "type" in df.columns:
        empty = df["type"] == ""
        if empty.any():
            raise UserError(f"{path}: empty type in {int(empty.sum())} row(s), first at {_where(df, empty)}")
        out["type"] = df["type"]
    return out


def _examples(ids, n: int = 3) -> str:
    ids = list(ids)
    return ", ".join(repr(i) for i in ids[:n]) + (", ..." if len(ids) > n else "")


def join_by_pair_id(
    sub: pd.DataFrame, truth: pd.DataFrame, sub_path: Path, truth_path: Path
) -> tuple[pd.DataFrame, str | None]:
    """The submission's similarity for each truth row, in the truth's order; plus a warning when the orders differ.

    Raises UserError when an id is missing from the submission or the submission has ids the truth lacks.
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
        raise UserError(f"{sub_path}: " + " and ".join(parts) + hint)
    joined = truth.copy()
    joined["similarity"] = sub["similarity"].to_numpy()[pos]
    warning = None
    if not np.array_equal(pos, np.arange(len(pos))):
        row = int(np.argmax(pos != np.arange(len(pos)))) + 1
        warning = (f"warning: {sub_path} is not in the order of {truth_path} (first difference at row {row}); "
                   "scored by pair_id. The organisers' scorer pairs rows by position and would have scored this file "
                   "wrongly.")
    return joined, warning
