"""faiss search (curation.search) against brute force numpy."""
from __future__ import annotations

import numpy as np
import pytest

from curation.noise import synthetic_embeddings
from curation.search import DEFAULT_NPROBE, build_index, knn, plan_index


def _brute(x, q, k):
    sims = q @ x.T
    ids = np.argsort(-sims, axis=1)[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


def test_plan_index_by_size():
    assert plan_index(1000) == "Flat"
    assert plan_index(10_000) == "Flat"
    assert plan_index(1_000_000) == "IVF4000,Flat"
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


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,SQ8"])
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
