"""Synthetic English sentences for embedding tests and benches: varied lengths, real words.

One generator for tests/e2e/test_batch_shards.py, tests/e2e/test_local_batch_jobs.py and
bench/batch_embed.py, so the bench measures rows like the ones the tests check.
"""

from __future__ import annotations

import random

SUBJECTS = [
    "The scheduler",
    "A tired engineer",
    "Our quarterly report",
    "The new GPU node",
    "My grandmother",
    "The train to Edinburgh",
    "This recipe",
    "The autoscaler",
    "A small startup",
    "The museum",
    "Photosynthesis",
    "The support team",
    "A woman on the night bus",
    "The city council",
]
VERBS = [
    "moved",
    "delayed",
    "improved",
    "described",
    "rejected",
    "doubled",
    "explained",
    "replaced",
    "converted",
    "celebrated",
    "measured",
    "ignored",
]
OBJECTS = [
    "the pending pods",
    "the chocolate cake",
    "its revenue forecast",
    "forty minutes of signal failure",
    "the request queue",
    "an old violin",
    "the password reset flow",
    "light energy into glucose",
    "the ninetieth birthday party",
    "every idle GPU in the cluster",
]
CLAUSES = [
    "because the budget ran out",
    "after a long meeting on Tuesday",
    "while the cluster was draining",
    "although nobody had asked for it",
    "so that the latency stayed under a second",
    "which surprised the analysts",
    "before the storm reached the coast",
    "and the results were published in the morning paper",
]


def sentence(rng: random.Random) -> str:
    """One to three sentences, a few clauses each: 8 to about 120 tokens."""
    out = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        parts = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"]
        parts += rng.sample(CLAUSES, rng.randint(0, 4))
        out.append(" ".join(parts) + rng.choice([".", ".", "!", "?"]))
    return " ".join(out)
