"""faiss search (curation.flagging.search) against brute force numpy."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from curation.flagging.noise import synthetic_embeddings
from curation.flagging.search import (
    DEFAULT_NPROBE, build_index, indexed_neighbours, knn, plan_index, to_gpus, train_index,
)


def _brute(x, q, k):
    sims = q @ x.T
    ids = np.argsort(-sims, axis=1)[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


def test_plan_index_by_size():
    assert plan_index(1000) == "Flat"
    assert plan_index(10_000) == "Flat"
    assert plan_index(1_000_000) == "IVF4000,SQfp16"
    assert plan_index(20_000).startswith("IVF")
    assert plan_index(10_000_000).endswith(",SQ8")


def test_exact_index_equals_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:100] + 0.1 * rng.standard_normal((100, 32)).astype(np.float32)
    sims, ids = knn(build_index(x), q, 5)
    ref_s, ref_i = _brute(x, q, 5)
    assert (ids == ref_i).all()
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,SQfp16", "IVF64,SQ8"])
def test_approximate_indexes_find_the_true_neighbour(factory):
    emb, given, truth = synthetic_embeddings(3000, 4, 64, moved=0.0, seed=1)
    x = emb.astype(np.float32)
    centres = np.zeros((3000, 64), np.float32)
    np.add.at(centres, truth, x)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    index = build_index(centres, factory=factory, nprobe=DEFAULT_NPROBE)
    sims, ids = knn(index, x[:2000], 3)
    ref_s, ref_i = _brute(centres, x[:2000], 1)
    recall = np.mean(ids[:, 0] == ref_i[:, 0])
    assert recall >= 0.95, recall
    assert np.mean(np.abs(sims[:, 0] - ref_s[:, 0]) < 0.02) >= 0.95


def test_knn_with_fewer_rows_than_k():
    x = np.eye(3, dtype=np.float32)
    sims, ids = knn(build_index(x), x, 10)
    assert ids.shape == (3, 3) and (ids[:, 0] == [0, 1, 2]).all()


def _centres(n_ids=3000, dim=64):
    emb, given, truth = synthetic_embeddings(n_ids, 4, dim, moved=0.0, seed=1)
    x = emb.astype(np.float32)
    centres = np.zeros((n_ids, dim), np.float32)
    np.add.at(centres, truth, x)
    return x, centres / np.linalg.norm(centres, axis=1, keepdims=True)


def test_hnsw_option_and_search_effort():
    x, centres = _centres()
    index = build_index(centres, factory="HNSW32", nprobe=8)
    assert index.hnsw.efSearch == 32  # 4 x nprobe
    sims, ids = knn(index, x[:2000], 3, nprobe=16)
    assert index.hnsw.efSearch == 64
    ref_s, ref_i = _brute(centres, x[:2000], 1)
    assert np.mean(ids[:, 0] == ref_i[:, 0]) >= 0.95
    ivf = build_index(centres, factory="IVF64,Flat", nprobe=3)
    assert faiss.extract_index_ivf(ivf).nprobe == 3
    knn(ivf, x[:10], 1, nprobe=7)
    assert faiss.extract_index_ivf(ivf).nprobe == 7


def test_float16_queries_are_widened_chunk_by_chunk():
    x, centres = _centres()
    index = build_index(centres, factory="IVF64,Flat")
    a = knn(index, x[:1000], 3, chunk=128)
    b = knn(index, x[:1000].astype(np.float16).astype(np.float32), 3)
    c = knn(index, x[:1000].astype(np.float16), 3, chunk=100)
    assert (a[1][:, 0] == b[1][:, 0]).mean() > 0.99 and np.array_equal(b[1], c[1])


@pytest.mark.parametrize("factory", ["IVF64,SQfp16", "Flat", "HNSW32"])
def test_an_index_filled_from_a_trained_one_keeps_its_lists_and_finds_the_true_neighbours(factory):
    """A clean indexes the core centroids, then the main-component centroids of the same identities, with the first
    index's training: the copy must be the index training would have made (same lists, same results), stay usable for
    other rows of the same kind, and leave the trained index empty for further copies."""
    x, centres = _centres()
    trained = train_index(centres, factory=factory)
    own = build_index(centres, factory=factory, nprobe=8)  # trains itself, with the same seed
    copy = build_index(centres, nprobe=8, trained=trained)
    assert trained.ntotal == 0 and copy.ntotal == len(centres) and type(copy) is type(own)
    if factory.startswith("IVF"):
        lists = [faiss.extract_index_ivf(i).quantizer for i in (own, copy)]
        assert np.array_equal(*(q.reconstruct_n(0, q.ntotal) for q in lists))
    assert all(np.array_equal(a, b) for a, b in zip(knn(own, x[:500], 3), knn(copy, x[:500], 3)))
    # rows near, not equal to, the training rows (another identity set's centroids): the true neighbour is found
    rng = np.random.default_rng(3)
    moved = centres + 0.05 * rng.standard_normal(centres.shape).astype(np.float32)
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    again = build_index(moved, nprobe=DEFAULT_NPROBE, trained=trained)
    ids = knn(again, x[:2000], 1)[1]
    assert np.mean(ids[:, 0] == _brute(moved, x[:2000], 1)[1][:, 0]) >= 0.95


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,SQfp16", "IVF64,SQ8", "Flat"])
def test_indexed_neighbours_are_faiss_own_results_bit_for_bit(factory):
    """indexed_neighbours searches an IVF index's own rows list by list (for the cache): every row's neighbours and
    cosines are still exactly what faiss's own search returns for the rows in their order."""
    _, centres = _centres()
    index = build_index(centres, factory=factory, nprobe=8)
    sims, ids = indexed_neighbours(index, centres, 4, nprobe=5, chunk=700)
    ref_s, ref_i = index.search(centres, 4)
    assert np.array_equal(ids, ref_i) and np.array_equal(sims, ref_s)
    assert (ids[:, 0] == np.arange(len(centres))).mean() > 0.99  # itself first
    if factory != "Flat":
        lists = index.quantizer.search(centres, 1)[1][:, 0]
        assert (np.diff(lists) < 0).any()  # the rows' order is not the list order: the reordering was exercised


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="no GPU visible to faiss")
def test_gpu_index_agrees_with_cpu():
    x, centres = _centres()
    for factory in ("Flat", "IVF64,Flat", "IVF64,SQ8"):
        cpu = knn(build_index(centres, factory=factory), x[:2000], 3)[1]
        gpu = knn(build_index(centres, factory=factory, use_gpu=True), x[:2000], 3)[1]
        assert np.mean(cpu[:, 0] == gpu[:, 0]) >= 0.99, factory


def test_without_gpus_the_index_stays_on_the_cpu():
    if faiss.get_num_gpus():
        pytest.skip("GPUs present")
    index = faiss.IndexFlatIP(8)
    assert to_gpus(index) is index
