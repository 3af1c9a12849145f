"""The review app's pages, one module each; app.py picks one per run. Layout only: the logic is curation.review."""
