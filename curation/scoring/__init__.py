"""Measuring verifiers: the metrics, the files users hand us, scoring pairs, and the figures.

`metrics` (EER in both conventions, TAR@FAR, per-type rates), `tables` (submissions, ground truth, pair lists),
`pair_scores` (pairs scored by cosine through the embedding pass), `predict` (a submission with fallbacks),
`evaluate` (`evaluate_scores`, the seam every scoring mode ends in), `compare` (several runs in one table), `plots`.
"""
