"""Finding identities and photos by name, for the app's search box (escaped LIKE patterns, bounded results)."""
from __future__ import annotations

import pandas as pd

from labels.store import LabelStore


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def find_identities(store: LabelStore, text: str, *, limit: int = 20) -> list[str]:
    """Identity names starting with `text` (through the identity index), then containing it (case-insensitive)."""
    text = text.strip()
    if not text:
        return []
    prefix = store.query(
        "SELECT DISTINCT identity FROM images WHERE identity >= ? AND identity < ? ORDER BY identity LIMIT ?",
        [text, text + "\U0010ffff", limit],
    ).identity.tolist()
    if len(prefix) >= limit:
        return prefix
    more = store.query(
        "SELECT DISTINCT identity FROM images WHERE identity LIKE ? ESCAPE '\\' ORDER BY identity LIMIT ?",
        [_like(text), limit],
    ).identity.tolist()
    return (prefix + [m for m in more if m not in prefix])[:limit]


def search(store: LabelStore, text: str, *, limit: int = 50) -> pd.DataFrame:
    """Identities and files matching `text` (identity name or file path, case-insensitive substring).

    Returns rows of: match ('identity' | 'file'), identity, path (files only), image_id (files only), n_open_flags.
    """
    text = text.strip()
    cols = ["match", "identity", "path", "image_id", "n_open_flags"]
    if not text:
        return pd.DataFrame(columns=cols)
    names = find_identities(store, text, limit=limit)
    ident = pd.DataFrame({"match": "identity", "identity": names, "path": None, "image_id": None})
    files = store.query(
        "SELECT 'file' AS match, identity, path, id AS image_id FROM images WHERE present=1 AND path LIKE ? ESCAPE '\\'"
        " ORDER BY id LIMIT ?",
        [_like(text), limit],
    )
    out = pd.concat([ident, files], ignore_index=True) if len(files) else ident
    wanted = out.identity.unique().tolist()
    if not wanted:
        return pd.DataFrame(columns=cols)
    n_open = store.query(
        f"SELECT identity, COUNT(*) AS n_open_flags FROM flags WHERE status='open' AND identity IN"
        f" ({','.join('?' * len(wanted))}) GROUP BY identity",
        wanted,
    )
    out = out.merge(n_open, on="identity", how="left").fillna({"n_open_flags": 0})
    out["n_open_flags"] = out.n_open_flags.astype(int)
    return out[cols]
