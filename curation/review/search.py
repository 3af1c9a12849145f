"""Finding identities and photos by name, for the app's search box (bounded results, LIKE wildcards literal)."""
from __future__ import annotations

import pandas as pd

from labels.store import LabelStore


def find_identities(store: LabelStore, text: str, *, limit: int = 20) -> list[str]:
    """Identity names starting with `text` (through the identity index), then containing it (case-insensitive)."""
    text = text.strip()
    if not text:
        return []
    prefix = store.identity_names(prefix=text, limit=limit)
    if len(prefix) >= limit:
        return prefix
    more = store.identity_names(containing=text, limit=limit)
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
    files = store.find_images(text, limit=limit).assign(match="file")
    out = pd.concat([ident, files], ignore_index=True) if len(files) else ident
    wanted = out.identity.unique().tolist()
    if not wanted:
        return pd.DataFrame(columns=cols)
    n_open = store.open_flag_counts(wanted).groupby("identity", as_index=False).n.sum()
    out = out.merge(n_open.rename(columns={"n": "n_open_flags"}), on="identity", how="left").fillna({"n_open_flags": 0})
    out["n_open_flags"] = out.n_open_flags.astype(int)
    return out[cols]
