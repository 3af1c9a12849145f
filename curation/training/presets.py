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
    # Fine-tuning a pretrained embedder (e.g. MobileFaceNet from ONNX) on a CPU, every layer: lr 1e-5 with flips for
    # 100 steps of 32 pairs is where held-out real EER stayed at step 0's (1.4%) while deepfake FAR fell 38% -> 33%
    # (80 training / 40 held-out LFW identities with curation.fakes deepfakes); lr 1e-4 quadrupled real EER, and by
    # 200-300 steps real EER had crept to 2.4% for one more point of deepfake FAR.
    # Training only the last layers (trainable "last:9") needs a higher lr (1e-3) and a term that holds real photos at
    # their pretrained embeddings, which this loop does not have: see README "Does fine-tuning help?".
    "finetune-pretrained": {
        "lr": 1e-5,
        "flip": True,
        "trainable": "all",
        "max_steps": 100,
        "val_every": 50,
    },
}
