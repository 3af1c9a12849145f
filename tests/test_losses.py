"""The training losses against independent computations: hand arithmetic for the pair loss, numpy for AdaFace's head."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embeddings.losses import AdaFaceHead, AdaptiveMarginPairLoss, adaptive_margin_logits


def test_pair_loss_matches_hand_computation():
    cos = [0.8, 0.1, -0.3, 0.45]
    labels = [1, 0, 0, 1]
    s, m_b, alpha = 64.0, 0.35, 0.1
    expected = []
    for c, y in zip(cos, labels):
        m_d = m_b + alpha * (1 - c)
        logit = s * (c - m_d * y)
        p = 1 / (1 + math.exp(-logit))
        # BCE on the sigmoid, written with log1p so that p close to 1 stays exact in double precision.
        expected.append(-math.log(p) if y == 1 else -math.log1p(-p))
    loss = AdaptiveMarginPairLoss()(torch.tensor(cos), torch.tensor(labels))
    assert loss.item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    # The first pair by hand: m_d = 0.35 + 0.1 * 0.2 = 0.37, logit = 64 * 0.43 = 27.52.
    logits = adaptive_margin_logits(torch.tensor(cos, dtype=torch.float64), torch.tensor(labels))
    assert logits[0].item() == pytest.approx(27.52)
    assert logits[1].item() == pytest.approx(6.4)  # negatives get no margin: 64 * 0.1


def test_pair_loss_options_and_gradient_direction():
    cos = torch.tensor([0.5, 0.5], requires_grad=True)
    labels = torch.tensor([1.0, 0.0])
    loss = AdaptiveMarginPairLoss(s=10.0, m_b=0.2, alpha=0.5)(cos, labels)
    c = 0.5
    logit_pos = 10 * (c - (0.2 + 0.5 * (1 - c)))  # 10 * (0.5 - 0.45) = 0.5
    logit_neg = 10 * c
    expected = (math.log1p(math.exp(-logit_pos)) + math.log1p(math.exp(logit_neg))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert cos.grad[0] < 0 < cos.grad[1]  # descent raises the positive pair's cosine and lowers the negative's


def test_pair_loss_stays_finite_when_the_sigmoid_saturates():
    loss = AdaptiveMarginPairLoss()(torch.tensor([-1.0, 1.0]), torch.tensor([1, 0]))
    # Both pairs are maximally wrong: logits -64 * 1.55 and +64; BCE is then the absolute logit.
    assert loss.item() == pytest.approx((64 * 1.55 + 64) / 2, rel=1e-5)


def _adaface_numpy(emb, norms, labels, kernel, batch_mean, batch_std, m=0.4, h=0.333, s=64.0, t_alpha=0.01):
    """AdaFace's head.py forward re-done densely in numpy (one-hot margins on every class, as the original)."""
    eps = 1e-3
    kernel_norm = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    cosine = np.clip(emb @ kernel_norm, -1 + eps, 1 - eps)
    safe = np.clip(norms, 0.001, 100)
    batch_mean = safe.mean() * t_alpha + (1 - t_alpha) * batch_mean
    batch_std = safe.std(ddof=1) * t_alpha + (1 - t_alpha) * batch_std
    scaler = np.clip((safe - batch_mean) / (batch_std + eps) * h, -1, 1)
    one_hot = np.zeros_like(cosine)
    one_hot[np.arange(len(labels)), labels] = 1
    theta = np.clip(np.arccos(cosine) + one_hot * (-m * scaler), eps, math.pi - eps)
    cosine = np.cos(theta) - one_hot * (m + m * scaler)
    return cosine * s, batch_mean, batch_std


def test_adaface_head_matches_numpy_reimplementation():
    rng = np.random.default_rng(0)
    n, d, c = 6, 8, 5
    raw = rng.normal(size=(n, d)) * rng.uniform(5, 40, size=(n, 1))
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    emb = raw / norms
    labels = rng.integers(0, c, size=n)
    head = AdaFaceHead(num_classes=c, embedding_size=d).double()
    kernel = head.kernel.detach().numpy().copy()
    expected, mean, std = _adaface_numpy(emb, norms, labels, kernel, 20.0, 100.0)

    got = head(torch.from_numpy(emb), torch.from_numpy(norms), torch.from_numpy(labels))
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-10, atol=1e-9)
    assert head.batch_mean.item() == pytest.approx(mean) and head.batch_std.item() == pytest.approx(std)

    # A second batch uses the updated statistics.
    expected2, _, _ = _adaface_numpy(emb[::-1], norms[::-1], labels[::-1], kernel, mean, std)
    got2 = head(torch.from_numpy(emb[::-1].copy()), torch.from_numpy(norms[::-1].copy()),
                torch.from_numpy(labels[::-1].copy()))
    np.testing.assert_allclose(got2.detach().numpy(), expected2, rtol=1e-10, atol=1e-9)


def test_adaface_head_state_keys_and_eval_mode_keeps_statistics():
    head = AdaFaceHead(num_classes=3, embedding_size=4)
    assert list(head.state_dict()) == ["kernel", "t", "batch_mean", "batch_std"]  # the official ckpt's head.* keys
    head.eval()
    unit = F.normalize(torch.randn(4, 4), dim=1)
    logits = head(unit, torch.full((4, 1), 30.0), torch.tensor([0, 1, 2, 0]))
    assert logits.shape == (4, 3)
    assert head.batch_mean.item() == 20.0 and head.batch_std.item() == 100.0
    loss = F.cross_entropy(head.train()(unit, torch.full((4, 1), 30.0), torch.tensor([0, 1, 2, 0])),
                           torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert torch.isfinite(head.kernel.grad).all()
