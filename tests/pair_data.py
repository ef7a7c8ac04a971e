"""Small synthetic sentence-pair (NLI-shaped) files for tests and the smoke-pair recipe.

    python tests/pair_data.py runs/smoke-pair-data      # train/dev/test.jsonl there

Each row is a premise (a subject doing something somewhere) and a hypothesis about the
same subject whose one marker word decides the label: a tiny random teacher learns it in
a few epochs, and a swap of that word for another class's marker flips it, which is what
a CoD e2e test needs. Generated at test time; nothing large is committed.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

LABELS = ("entailment", "neutral", "contradiction")
# The words that decide each class (what a scripted generator answers with).
MARKERS = {
    "entailment": ["outdoors", "awake", "moving", "busy"],
    "neutral": ["famous", "tired", "waiting", "married"],
    "contradiction": ["sleeping", "absent", "indoors", "motionless"],
}
SUBJECTS = ["A man", "A woman", "A girl", "An old lady", "The team", "A young boy", "A chef"]
SCENES = [
    "is playing guitar on a busy street",
    "walks along the beach at sunset",
    "reads a book in the park",
    "rides a bike down a hill",
    "cooks dinner at a street market",
    "climbs a rock wall outside",
    "throws a ball across the field",
]
SIZES = {"train": 600, "dev": 60, "test": 90}


def rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = LABELS[i % 3]
        subject = rng.choice(SUBJECTS)
        premise = f"{subject} {rng.choice(SCENES)}."
        hypothesis = f"{subject} is {rng.choice(MARKERS[label])}."
        out.append({"premise": premise, "hypothesis": hypothesis, "label": label})
    rng.shuffle(out)
    return out


def write_pair_files(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """train/dev/test.jsonl with premise, hypothesis, label (a class name) columns."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, (role, n) in enumerate(SIZES.items()):
        path = folder / f"{role}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows(n, seed * 10 + k)))
        paths[role] = path
    return paths


if __name__ == "__main__":
    print(write_pair_files(sys.argv[1] if len(sys.argv) > 1 else "runs/smoke-pair-data"))
