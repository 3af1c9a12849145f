"""Training objectives: the adaptive-margin pair loss of the reference recipe, and AdaFace's margin head.

Why two: the recipe fine-tunes on pairs (same person / different person / person vs own deepfake), which needs no class
weights and copes with deepfakes as hard negatives; the AdaFace head is the classification-style alternative for a
cleaned set with many photos per identity (it is how the pretrained IR-101 was trained). `curation.train_on_clean`
picks one with `--objective pair|adaface`.

Example:
    >>> loss_fn = AdaptiveMarginPairLoss()                      # s=64, m_b=0.35, alpha=0.1
    >>> cos = (unit_a * unit_b).sum(1)                           # cosine of each pair's unit embeddings
    >>> loss = loss_fn(cos, labels)                              # labels: 1 same person, 0 otherwise
    >>> head = AdaFaceHead(num_classes=1000)
    >>> loss = F.cross_entropy(head(unit, norm, identity), identity)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def adaptive_margin_logits(
    cos: torch.Tensor, labels: torch.Tensor, s: float = 64.0, m_b: float = 0.35, alpha: float = 0.1
) -> torch.Tensor:
    """Pair logits with an adaptive margin: logit = s * (cos - m_d * y), m_d = m_b + alpha * (1 - cos).

    Why adaptive: a positive pair must clear a larger margin the less similar it currently is, so hard positives
    (pose, age) pull harder than easy ones; negatives (y = 0) get no margin and are pushed below 0 by the scale.
    Inputs: `cos` [N] cosine similarities in [-1, 1]; `labels` [N] 1 for the same real person, 0 otherwise.
    Output: [N] logits, sigmoid(logit) being the probability of "same person".
    """
    y = labels.to(cos.dtype)
    m_d = m_b + alpha * (1 - cos)
    return s * (cos - m_d * y)


class AdaptiveMarginPairLoss(nn.Module):
    """Binary cross-entropy on sigmoid(`adaptive_margin_logits`), averaged over the pairs (the reference recipe).

    Computed from the logits (`binary_cross_entropy_with_logits`), which equals BCE on the sigmoid but stays finite
    when s = 64 drives the sigmoid to exactly 0 or 1 in float32.

    Example:
        >>> AdaptiveMarginPairLoss()(torch.tensor([0.8, 0.1]), torch.tensor([1, 0]))
        tensor(3.2008)
    """

    def __init__(self, s: float = 64.0, m_b: float = 0.35, alpha: float = 0.1):
        super().__init__()
        self.s, self.m_b, self.alpha = s, m_b, alpha

    def forward(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = cos.to(torch.promote_types(cos.dtype, torch.float32))  # float16 cosines from autocast: s = 64 needs fp32
        logits = adaptive_margin_logits(cos, labels, self.s, self.m_b, self.alpha)
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

    def extra_repr(self) -> str:
        return f"s={self.s}, m_b={self.m_b}, alpha={self.alpha}"


class AdaFaceHead(nn.Module):
    """AdaFace's margin head (Kim et al., CVPR 2022): a margin that adapts to image quality, read from the norm.

    The embedding norm, standardised by a running batch mean/std, scales between an angular (ArcFace-like) and an
    additive (CosFace-like) margin, so low-quality images get a milder target. Same parameters and buffers as AdaFace's
    `head.py` (`kernel` [D, C], `t`, `batch_mean`, `batch_std`; `t` is unused there too, kept so the official `head.*`
    keys load), same maths, with two deliberate differences: the running statistics are updated only in training mode
    and only from batches of 2 or more (a std of one value is NaN), and only the target column is computed with the
    margin rather than a dense one-hot matrix (identical result, far less memory for 100k+ identities).

    Inputs of forward: `embeddings` [N, D] unit vectors, `norms` [N, 1] their pre-normalisation norms (the backbone's
    forward gives both), `labels` [N] class indices. Output: [N, C] scaled logits for `F.cross_entropy`.

    Example:
        >>> head = AdaFaceHead(num_classes=10_000)
        >>> unit, norm = backbone(x)
        >>> loss = F.cross_entropy(head(unit, norm, y), y)
    """

    def __init__(self, num_classes: int, embedding_size: int = 512, m: float = 0.4, h: float = 0.333, s: float = 64.0,
                 t_alpha: float = 0.01):
        super().__init__()
        self.num_classes, self.m, self.h, self.s, self.t_alpha = num_classes, m, h, s, t_alpha
        self.eps = 1e-3
        self.kernel = nn.Parameter(torch.empty(embedding_size, num_classes))
        self.kernel.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)  # AdaFace's initialisation
        self.register_buffer("t", torch.zeros(1))
        self.register_buffer("batch_mean", torch.ones(1) * 20)
        self.register_buffer("batch_std", torch.ones(1) * 100)

    def forward(self, embeddings: torch.Tensor, norms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # At least float32 even under CUDA autocast: acos next to +-1 and s = 64 do not survive float16.
        dtype = torch.promote_types(self.kernel.dtype, torch.float32)
        with torch.autocast(embeddings.device.type, enabled=False):
            return self._logits(embeddings.to(dtype), norms.detach().to(dtype), labels)

    def _logits(self, embeddings: torch.Tensor, norms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel.to(embeddings.dtype)
        kernel = kernel / torch.linalg.vector_norm(kernel, dim=0, keepdim=True)
        cosine = (embeddings @ kernel).clamp(-1 + self.eps, 1 - self.eps)
        safe_norms = norms.reshape(-1, 1).clamp(0.001, 100)
        if self.training and safe_norms.shape[0] > 1:
            with torch.no_grad():
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * safe_norms.mean())
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * safe_norms.std())
        margin_scaler = ((safe_norms - self.batch_mean) / (self.batch_std + self.eps) * self.h).clamp(-1, 1)
        index = labels.reshape(-1, 1).long()
        target = cosine.gather(1, index)
        theta = (target.acos() - self.m * margin_scaler).clamp(self.eps, math.pi - self.eps)  # g_angular
        target = theta.cos() - (self.m + self.m * margin_scaler)  # g_additive
        return cosine.scatter(1, index, target) * self.s

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, m={self.m}, h={self.h}, s={self.s}, t_alpha={self.t_alpha}"
