"""Fine-tuning a face embedder on cleaned labels: the pieces behind `python -m curation.train_on_clean`.

`config` (the recipe as a dataclass), `pairs` (same person / different person / own deepfake), `data` (labels ->
aligned crops -> pair datasets), `fakes` (synthetic deepfakes for datasets without any), `run_folder` (history,
checkpoints, resume), `distributed` (torchrun), `loop` (the training loop: `train(cfg)`).
"""
