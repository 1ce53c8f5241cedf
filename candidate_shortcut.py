"""Can the candidate list alone give the answer away? A check of the negative-sampling protocol.

    python candidate_shortcut.py --dataset lastfm-original   # after data.prepare --dataset lastfm --candidates original
    python candidate_shortcut.py --dataset lastfm            # data.prepare's default: negatives drawn per sample
    python candidate_shortcut.py --dataset lastfm-sdpo       # the original release's files

The original code draws a sample's 19 negatives from a generator seeded with the target's id
(`random.seed(target)`; `data.protocol.sample_candidates` reproduces it). Samples with the same target then
share many of their negatives, whatever the user, so a model can learn which negatives come with which
target instead of reading the history. This script measures that without any model:

- `same_target_overlap`: the mean fraction of negatives two samples share when they have the same target
  (pairs of consecutive samples of the split with that target), beside `other_target_overlap` for samples
  with different targets (seeded random pairs; about 19 / number of items for independent draws).
- `memorisation_hr@1`: HR@1 on the test split of a rule that never looks at the history: each candidate c
  scores the number of the other 19 candidates that came with c as a negative in a training sample whose
  target was c; the highest score is ranked first (ties: the candidate listed first). With negatives drawn
  independently of the target this rule sits near popularity (it still remembers which items were targets).
"""

from __future__ import annotations

import collections
import random
from typing import Sequence

import data_interface as di
import runtime


def _negatives(record: di.Record) -> frozenset[str]:
    return frozenset(candidate for candidate in record.candidates if candidate != record.target)


def overlaps(records: Sequence[di.Record], pairs: int = 2000, seed: int = 0) -> dict[str, float | int]:
    """Mean shared fraction of negatives for same-target pairs and for seeded random different-target pairs."""
    by_target: dict[str, list[frozenset[str]]] = collections.defaultdict(list)
    for record in records:
        by_target[record.target].append(_negatives(record))
    same = [len(a & b) / max(len(a), 1) for sets in by_target.values() for a, b in zip(sets, sets[1:])]
    targets = sorted(by_target)
    rng = random.Random(seed)
    other = []
    if len(targets) >= 2:
        for _ in range(pairs):
            first, second = rng.sample(targets, 2)
            a, b = by_target[first][0], by_target[second][0]
            other.append(len(a & b) / max(len(a), 1))
    return {"same_target_pairs": len(same),
            "same_target_overlap": sum(same) / len(same) if same else float("nan"),
            "other_target_overlap": sum(other) / len(other) if other else float("nan")}


def memorisation_hits(train: Sequence[di.Record], test: Sequence[di.Record]) -> list[bool]:
    """Per test record: does the history-blind rule (module docstring) rank the target first?"""
    came_with: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for record in train:
        came_with[record.target].update(_negatives(record))
    hits = []
    for record in test:
        def score(candidate: str) -> int:
            seen = came_with.get(candidate, {})
            return sum(1 for other in record.candidates if other != candidate and other in seen)
        best = max(record.candidates, key=score)  # max keeps the first of equal scores
        hits.append(best == record.target)
    return hits


def measure(dataset: str = "lastfm", train_file: str | None = None, test_file: str | None = None) -> dict:
    """Both measurements for a prepared dataset (or explicit split files); prints and returns them."""
    data = runtime.load_stage_data(("train", "test"), dataset, train_file=train_file, test_file=test_file)
    hits = memorisation_hits(data.train, data.test)
    result = {"dataset": dataset, "n_test": len(hits), "memorisation_hr@1": sum(hits) / len(hits),
              **{f"train_{key}": value for key, value in overlaps(data.train).items()}}
    print(f"{dataset}: history-blind memorisation rule HR@1 {result['memorisation_hr@1']:.4f} on {len(hits)} test "
          f"prompts (random 0.05); negatives shared by two training samples with the same target "
          f"{result['train_same_target_overlap']:.3f}, with different targets {result['train_other_target_overlap']:.3f}")
    return result


if __name__ == "__main__":
    runtime.main(measure)
