"""Named fine-tuning presets: `python -m curation.train_on_clean ... --config NAME` (or a TOML/YAML file).

Why named presets: the reference recipe (the MMG team's, for AdaFace IR-101 on a GPU: the TrainConfig defaults, see
curation.training.config) and a recipe for fine-tuning a pretrained embedder on a CPU differ in several options at
once; a preset keeps each set in one place a run can name, and a run's config.json records the values it resolved to.
Precedence stays defaults < preset or file < flags. Values are TrainConfig option names and values, checked like a
config file's.

Example:
    python -m curation.train_on_clean work --init onnx:mobilefacenet.onnx --out runs/ft --config finetune-pretrained
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    # The reference recipe: exactly the TrainConfig defaults (AdamW lr 5e-6, batch 32, plateau scheduler on validation
    # EER every 100 steps, adaptive margin s=64, m_b=0.35, alpha=0.1, the 50/25/25 pair mix, the 5 best kept).
    "recipe": {},
    # Fine-tuning a pretrained embedder (e.g. MobileFaceNet from ONNX) on a CPU: the recipe benchmarks/noisy_vs_clean.py
    # measured (README "Does fine-tuning help?"): only the last 9 layers (MobileFaceNet's 7x7 stage and head, 4% of its
    # compute) at lr 1e-3 after 20 warm-up steps, 100 steps of 32 pairs, half of them person vs own deepfake, margin
    # scale 32, and distillation 50 x (1 - cos) to the initial embeddings of the real photos, with flips. On 40 held-out
    # LFW identities real EER stayed within 0.5 point of step 0's while deepfake FAR fell 41.6% -> 38-39%; without the
    # distillation real EER rose to 2.5-3.8% (from 1.8%). Every layer at lr 1e-5 (the setting) did better on
    # deepfakes (38% -> 33%) but costs ~25x the compute of the tail: the choice on a GPU.
    "finetune-pretrained": {
        "trainable": "last:9",
        "lr": 1e-3,
        "warmup_steps": 20,
        "max_steps": 100,
        "batch_size": 32,
        "fake_fraction": 0.5,
        "margin_s": 32.0,
        "distill": 50.0,
        "flip": True,
        "val_every": 50,
    },
}
