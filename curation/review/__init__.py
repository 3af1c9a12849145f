"""Everything the review app does, as plain functions: the Streamlit pages only lay out what these return.

One module per part of the app (queue, identity, actions, search, overview, thumbnails, runs); this package gathers
their public names, so a page reads `rv.queue_snapshot(...)` without caring which module holds it.

Why here and not in the UI: a reviewer's decision must mean the same thing whether it is made in the app, in a test or
in a script, and every function below must stay fast on a work folder of 1,000,000 photos (the app calls them on every
rerun). So:
- the queue and the identity view query the label store through its indexes and read only one identity's rows of the
  last clean (`WORK/clean/nodes.parquet`, `WORK/clean/embeddings.npy` memory-mapped), never the whole table per page;
- every action is one `LabelStore.decide` / `undo`, written at once, in `strict` mode: a decision that a second reviewer
  (or a double click) already made is refused with the reason instead of being recorded twice;
- images are served only from inside the dataset root or the work folder, by image id, never by a path from a request.

Example:
    >>> work = WorkFolder.open("WORK")
    >>> store = LabelStore.open(work.root)
    >>> clean = load_clean(work)
    >>> queue = queue_snapshot(store, summarize_report(read_report(work)))
    >>> view = identity_view(store, clean, queue.frame.identity.iloc[0])
    >>> apply_action(store, "remove", reviewer="ana", image_ids=view.flagged_ids()[:1]).message
    '#1: removed 1 photo(s)'
"""
from __future__ import annotations

from curation.review.actions import (
    Outcome, Suggestion, accept_suggestions, apply_action, history_lines, keep_all, split_name, suggestions,
    undo_decision, undo_decisions
)
from curation.review.identity import IdentityView, SECTIONS, heatmap_figure, identity_preview, identity_view
from curation.review.overview import (
    Overview, flag_counts_figure, overview, rates_figure, rates_table, similarity_histogram_figure, throughput
)
from curation.review.simulate import SimulatedReview, simulate_review
from curation.review.queue import (
    ORDERS, QueueSnapshot, flag_worth, load_position, next_identity, previous_identity, queue_page, queue_snapshot,
    rank_by_information, save_position, summarize_report
)
from curation.review.runs import (
    HISTORY_FILE, METRICS_FILE, evaluation_figures, evaluation_table, find_runs, read_history, scores_figure,
    training_figures
)
from curation.review.search import find_identities, search
from curation.review.thumbnails import allowed_roots, crop_align_id, load_thumbnail, photo_source, placeholder
from curation.workfolder import CleanResult, WorkFolder, clean_version, contained_folder, load_clean, read_report
