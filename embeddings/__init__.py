"""Faces to embeddings: IR backbones and their checkpoints, alignment, embedders, the embedding pass, losses.

Knows nothing of the label store (see ARCHITECTURE.md). The public entry points other parts and outside checks use:

    >>> from embeddings import build_backbone, load_backbone, save_backbone
    >>> model = load_backbone("adaface_ir101_webface12m.ckpt")     # depth read from the keys, eval mode
"""
from embeddings.backbones import build_backbone, flip_fused_embedding
from embeddings.checkpoints import CheckpointError, load_backbone, read_checkpoint, save_backbone

__all__ = [
    "CheckpointError",
    "build_backbone",
    "flip_fused_embedding",
    "load_backbone",
    "read_checkpoint",
    "save_backbone",
]
