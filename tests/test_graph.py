"""Per-identity graphs (curation.flagging.graph) against an independent numpy + networkx computation."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from curation.flagging.calibrate import identity_sums
from curation.flagging.graph import HIST_EDGES, build_graphs, components_networkx, one_thread


def _reference_labels(adj: np.ndarray) -> np.ndarray:
    """Components straight from networkx, ordered by size (ties: smallest member), isolated = -1."""
    g = nx.from_numpy_array(adj.astype(int))
    comps = [c for c in nx.connected_components(g) if len(c) > 1]
    comps.sort(key=lambda c: (-len(c), min(c)))
    out = np.full(len(adj), -1)
    for k, c in enumerate(comps):
        out[sorted(c)] = k
    return out


def test_components_networkx_on_hand_graphs():
    # 0-1-2 chain, 3-4 pair, 5 isolated
    adj = np.zeros((6, 6), bool)
    for a, b in [(0, 1), (1, 2), (3, 4)]:
        adj[a, b] = adj[b, a] = True
    assert components_networkx(adj).tolist() == [0, 0, 0, 1, 1, -1]
    # equal sizes: the component holding the smallest index comes first
    adj = np.zeros((4, 4), bool)
    adj[2, 3] = adj[3, 2] = adj[0, 1] = adj[1, 0] = True
    assert components_networkx(adj).tolist() == [0, 0, 1, 1]
    assert components_networkx(np.zeros((3, 3), bool)).tolist() == [-1, -1, -1]


def _clustered(rng, n_ids, dim=16):
    """Identities made of 1-3 sub-clusters plus stray photos, so graphs of every shape occur."""
    emb, ident = [], []
    for i in range(n_ids):
        for _ in range(rng.integers(1, 4)):
            centre = rng.standard_normal(dim)
            for _ in range(rng.integers(1, 8)):
                emb.append(centre + 0.35 * rng.standard_normal(dim))
                ident.append(i)
    emb = np.array(emb, np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), np.array(ident)


@pytest.mark.parametrize("block_elems", [1 << 24, 2000])  # one block, and many tiny ones
def test_build_graphs_equals_networkx_on_random_graphs(block_elems):
    rng = np.random.default_rng(1)
    emb, codes = _clustered(rng, 60)
    is_fake = rng.random(len(codes)) < 0.1
    valid = rng.random(len(codes)) > 0.05
    t = 0.6
    g = build_graphs(emb, codes, is_fake, valid, t, device="cpu", block_elems=block_elems)
    assert set(g.identities.via) >= {"proof", "networkx"}  # both paths were exercised
    hist_total = 0
    for c in np.unique(codes):
        rows = np.flatnonzero((codes == c) & valid & ~is_fake)
        if len(rows) == 0:
            assert (g.component[(codes == c)] == -2).all()
            continue
        sims = emb[rows] @ emb[rows].T
        adj = sims >= t
        np.fill_diagonal(adj, False)
        expected = _reference_labels(adj) if len(rows) > 1 else np.array([0])
        assert g.component[rows].tolist() == expected.tolist(), f"identity {c}"
        assert g.degree[rows].tolist() == adj.sum(1).tolist()
        main = np.flatnonzero(expected == 0)
        for j, r in enumerate(rows):
            others = [m for m in main if m != j]
            if others:
                assert g.sim_to_main[r] == pytest.approx(sims[j, others].mean(), abs=1e-5)
                assert g.best_to_main[r] == pytest.approx(sims[j, others].max(), abs=1e-5)
            else:
                assert np.isnan(g.sim_to_main[r])
        fakes = np.flatnonzero((codes == c) & valid & is_fake)
        for f in fakes:
            if len(main):
                assert g.best_to_main[f] == pytest.approx((emb[rows[main]] @ emb[f]).max(), abs=1e-5)
        hist_total += len(rows) * (len(rows) - 1) // 2
    assert g.same_identity_hist.sum() == hist_total
    assert (g.component[~valid] == -2).all() and (g.component[is_fake] == -2).all()


def test_single_photo_identical_photos_and_histogram_bins():
    v = np.eye(4, dtype=np.float32)
    emb = np.stack([v[0], v[0], v[0], v[1], v[2], v[3]])
    codes = np.array([0, 0, 0, 1, 2, 2])  # identity 0: identical photos; 1: one photo; 2: two strangers
    g = build_graphs(emb, codes, np.zeros(6, bool), np.ones(6, bool), 0.5, device="cpu")
    assert g.component.tolist() == [0, 0, 0, 0, -1, -1]
    assert g.identities.via.tolist() == ["proof", "single", "proof"]
    assert g.identities.n_main.tolist() == [3, 1, 0]
    # three pairs at cosine 1 fall in the last bin, one at 0 in the bin starting at 0
    assert g.same_identity_hist[-1] == 3
    assert g.same_identity_hist[np.searchsorted(HIST_EDGES, 0.0, side="right") - 1] == 1


def test_streaming_passes_run_on_one_torch_thread_and_give_the_threads_back():
    """A one_thread pass sees one torch thread; the caller's setting comes back after it,
    also when the pass raises; the sums are the same as a plain numpy sum per identity."""
    seen = []
    probe = one_thread(lambda: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        probe()
        assert seen == [1] and torch.get_num_threads() == 2

        @one_thread
        def failing():
            raise RuntimeError("inside")

        with pytest.raises(RuntimeError):
            failing()
        assert torch.get_num_threads() == 2
        rng = np.random.default_rng(0)
        emb = rng.standard_normal((50, 8)).astype(np.float16)
        codes = rng.integers(0, 4, 50)
        expected = np.stack([emb[codes == c].astype(np.float32).sum(0) for c in range(4)])
        np.testing.assert_allclose(identity_sums(emb, codes, np.arange(50), 4), expected, rtol=1e-5, atol=1e-5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
