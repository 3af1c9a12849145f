"""Bounded-memory flagging (curation.flagging + curation.flagging.graph chunks): the streamed path must not change the flags."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curation.flagging import FlagConfig, flag_embeddings
from curation.flagging.graph import identity_chunks
from curation.flagging.noise import synthetic_embeddings

KEY = ["row", "identity", "flag", "suggested_identity"]


@pytest.fixture(scope="module")
def noisy_set():
    """~2,400 photos of 300 identities: 10% moved, 3 identities split over two labels, 5% deepfakes, 3 NaN rows."""
    emb, given, truth = synthetic_embeddings(300, 8, 32, moved=0.1, split=3, seed=7)
    rng = np.random.default_rng(7)
    is_fake = rng.random(len(given)) < 0.05
    emb[[5, 500, 1500]] = np.nan
    names = np.array([f"id{g}" for g in given], dtype=object)
    return emb, names, is_fake


def _flags(res) -> pd.DataFrame:
    return res.flags.sort_values(KEY).reset_index(drop=True)


def test_chunked_graphs_give_the_same_flags_as_one_chunk(noisy_set):
    emb, names, is_fake = noisy_set
    codes = pd.factorize(names)[0]
    assert len(identity_chunks(codes, np.flatnonzero(codes >= 0), codes.max() + 1, 400)) >= 5  # really chunked
    one = flag_embeddings(emb, names, is_fake, config=FlagConfig(chunk_rows=10**9), device="cpu")
    many = flag_embeddings(emb, names, is_fake, config=FlagConfig(chunk_rows=400), device="cpu")
    a, b = _flags(one), _flags(many)
    assert set(a.flag) >= {"outlier", "merge", "fake_mismatch"}
    pd.testing.assert_frame_equal(a[KEY], b[KEY])
    np.testing.assert_allclose(a.score, b.score, atol=1e-5)
    for col in ("component", "degree", "valid"):
        assert (one.nodes[col].to_numpy() == many.nodes[col].to_numpy()).all(), col
    for col in ("sim_to_main", "best_to_main"):
        np.testing.assert_allclose(one.nodes[col], many.nodes[col], atol=1e-5, equal_nan=True)
    pd.testing.assert_frame_equal(one.identities.drop(columns="main_mean_cosine"),
                                  many.identities.drop(columns="main_mean_cosine"))
    hist_one, hist_many = (np.array(r.histogram["same_identity"]) for r in (one, many))
    assert hist_one.sum() == hist_many.sum() and np.abs(hist_one - hist_many).sum() <= 4  # bin edges vs rounding


def test_identity_chunks_keep_identities_whole_and_follow_the_file():
    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(50), rng.integers(1, 30, 50))  # a file written identity by identity ...
    codes[rng.choice(len(codes), 40, replace=False)] = rng.integers(0, 50, 40)  # ... with mislabelled photos
    codes[:3] = 49  # identity 49 appears first, but its photos sit at the end of the file
    rows = np.flatnonzero(rng.random(len(codes)) > 0.1)
    chunks = identity_chunks(codes, rows, 50, chunk_rows=100)
    assert len(chunks) > 3
    assert np.array_equal(np.sort(np.concatenate([part for _, part in chunks])), rows)  # every row exactly once
    for ids, part in chunks:
        assert np.array_equal(ids, np.unique(codes[part])) and (np.diff(part) > 0).all()
        assert len(part) <= 100 + np.bincount(codes[rows]).max()  # at most one identity past the budget
    assert 49 in chunks[-1][0]
    medians = [np.median(part) for _, part in chunks]
    assert medians == sorted(medians)


def test_memory_mapped_float16_file_gives_the_same_flags(noisy_set, tmp_path):
    emb, names, is_fake = noisy_set
    ref = flag_embeddings(emb, names, is_fake, config=FlagConfig(chunk_rows=400), device="cpu")
    np.save(tmp_path / "emb.npy", emb)
    mapped = np.load(tmp_path / "emb.npy", mmap_mode="r")
    res = flag_embeddings(mapped, names, is_fake, config=FlagConfig(chunk_rows=400), device="cpu")
    pd.testing.assert_frame_equal(_flags(ref), _flags(res))
    # rows 3x too long: normalised into a temporary file (the input map is read-only), with the same flags
    np.save(tmp_path / "long.npy", (emb.astype(np.float32) * 3).astype(np.float16))
    long = flag_embeddings(np.load(tmp_path / "long.npy", mmap_mode="r"), names, is_fake,
                           config=FlagConfig(chunk_rows=400), device="cpu")
    assert any("not unit length" in m for m in long.messages)
    pd.testing.assert_frame_equal(_flags(ref)[KEY], _flags(long)[KEY])


def test_faiss_index_override_is_used_and_agrees(noisy_set):
    emb, names, is_fake = noisy_set
    ref = flag_embeddings(emb, names, is_fake, device="cpu")
    hnsw = flag_embeddings(emb, names, is_fake, config=FlagConfig(faiss_index="HNSW32"), device="cpu")
    assert ref.thresholds["index"]["kind"] == "Flat" and hnsw.thresholds["index"]["kind"] == "HNSW32"
    pd.testing.assert_frame_equal(_flags(ref)[KEY], _flags(hnsw)[KEY])
