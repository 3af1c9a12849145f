"""Finding label errors in a face dataset from its embeddings: the cleaning method, on plain arrays.

`flag_embeddings(emb, identities, is_fake, ...)` is the whole method (see `core`); the modules beside it are its parts:
`calibrate` (thresholds from the data), `graph` (per-identity similarity graphs), `search` (faiss across identities),
and its self-test: `noise` (plant known label noise, score flags against it) and `demo` (the LFW photos it runs on).

Example:
    >>> from curation.flagging import FlagConfig, flag_embeddings
    >>> res = flag_embeddings(emb, identities, is_fake, config=FlagConfig(target_fmr=1e-3))
    >>> res.flags.head()        # row, identity, flag, component, suggested_identity, score, details
"""
from curation.flagging.core import FlagConfig, FlagError, FlagResult, flag_embeddings

__all__ = ["FlagConfig", "FlagError", "FlagResult", "flag_embeddings"]
