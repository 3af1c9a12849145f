"""The words cleaning, the review app and export share: flag kinds and decision actions.

Kept in one tiny module so that a typo in any of them is a failed import-time check, not a silently empty query.
"""

FLAG_KINDS: tuple[str, ...] = (
    "outlier",  # a real photo with no edge to any other photo of its identity
    "minority",  # a real photo outside the identity's largest connected component
    "split",  # an identity whose two largest components are both substantial (two people, one label)
    "merge",  # two identities whose photos match strongly (one person, two labels)
    "duplicate",  # the same photo (or a near copy) stored more than once
    "fake_mismatch",  # a deepfake that does not look like the identity it impersonates
    "no_face",  # no face was found in the photo
    "weak_alignment",  # no face was found, the photo was embedded from where faces sit in the others (a face crop)
    "unreadable",  # the file is not a readable image
)

# What each decision does to the current label of the images it names (see labels.store.LabelStore.decide).
ACTIONS: tuple[str, ...] = (
    "remove",  # leave the photo out of the cleaned dataset
    "restore",  # undo the effect of a remove, as a decision of its own
    "move",  # give the photos another identity (also how a component is split off into a new identity)
    "mark_fake",
    "mark_real",
    "merge",  # every photo of identity A goes to identity B
    "keep",  # the flag was wrong: nothing changes, the flag is closed
    "undo",  # reverses one earlier decision
)

# What the decision that answered a flag says about the flag (labels.estimate): the reviewer changed the photo's label
# (the flag found a real error) or left it as it was (the flag was wrong). An undo answers nothing.
VERDICTS: dict[str, str] = {
    "remove": "confirmed",
    "move": "confirmed",
    "mark_fake": "confirmed",
    "mark_real": "confirmed",
    "merge": "confirmed",
    "keep": "rejected",
    "restore": "rejected",
}
assert set(VERDICTS) == set(ACTIONS) - {"undo"}, "every action but undo says whether a flag was right"

# Open flags acted on by `export --unreviewed apply`, and how. Flags not listed need a person (split).
AUTO_ACTIONS: dict[str, str] = {
    "outlier": "remove",
    "minority": "remove",
    "duplicate": "remove",
    "fake_mismatch": "remove",
    "no_face": "remove",
    "unreadable": "remove",
    "merge": "merge",
}


def check_kind(kind: str) -> str:
    if kind not in FLAG_KINDS:
        raise ValueError(f"unknown flag kind {kind!r}; expected one of {', '.join(FLAG_KINDS)}")
    return kind


def check_action(action: str) -> str:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    return action
