"""The protocol shared by every dataset (data/README.md, *Protocol*): per-user sequences, filtering, the split of
users by time, item names, samples and their candidates."""

from __future__ import annotations

import bisect
import hashlib
import json
import random
from collections import Counter
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Any

from data.errors import DataPreparationError

NUM_CANDIDATES = 20
MIN_HISTORY = 3
MAX_HISTORY = 10
SEED_STRIDE = 1_000_003
HISTORY_SEPARATOR = "::"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Filtering:
    """Dataset-specific filtering, applied to de-duplicated user sequences.

    ``min_users_per_item`` / ``min_items_per_user`` define an iterated k-core;
    ``max_items`` keeps only the most popular items, ``max_users`` a hash-chosen
    subset of users (both before the k-core; ``None`` = no cap).
    """

    min_users_per_item: int = 1
    min_items_per_user: int = MIN_HISTORY + 1
    max_items: int | None = None
    max_users: int | None = None


FILTERING = {
    "lastfm": Filtering(min_users_per_item=4, min_items_per_user=4),
    "movielens": Filtering(min_users_per_item=1, min_items_per_user=4),
    "goodreads": Filtering(min_users_per_item=4, min_items_per_user=4, max_items=4500, max_users=6000),
}


# ---------------------------------------------------------------------------
# Sequences, filtering, split
# ---------------------------------------------------------------------------

Sequences = dict[str, list[tuple[str, int]]]


def id_key(raw_id: str) -> tuple[int, int, str]:
    """Sort key for raw ids: numeric ids numerically, then the others as strings."""
    return (0, int(raw_id), raw_id) if raw_id.isdigit() else (1, 0, raw_id)


def build_sequences(events: list[tuple[str, str, int]]) -> Sequences:
    """Per user, items in time order (ties: file order), each item kept at its first occurrence."""
    per_user: dict[str, list[tuple[str, int]]] = {}
    for user, item, time in events:
        per_user.setdefault(user, []).append((item, time))
    sequences: Sequences = {}
    for user in sorted(per_user, key=id_key):
        seen: set[str] = set()
        ordered = []
        for item, time in sorted(per_user[user], key=lambda pair: pair[1]):  # stable: ties keep file order
            if item not in seen:
                seen.add(item)
                ordered.append((item, time))
        sequences[user] = ordered
    return sequences


def cap_items(sequences: Sequences, max_items: int | None) -> Sequences:
    """Keep only the ``max_items`` items with the most users (ties: smaller id)."""
    counts = Counter(item for seq in sequences.values() for item, _ in seq)
    if max_items is None or len(counts) <= max_items:
        return sequences
    ranked = sorted(counts, key=lambda item: (-counts[item], id_key(item)))
    keep = set(ranked[:max_items])
    return {user: [pair for pair in seq if pair[0] in keep] for user, seq in sequences.items()}


def cap_users(sequences: Sequences, max_users: int | None, min_items: int) -> Sequences:
    """Keep ``max_users`` users with at least ``min_items`` items, chosen by the sha256 of their id."""
    eligible = [user for user, seq in sequences.items() if len(seq) >= min_items]
    if max_users is None or len(eligible) <= max_users:
        return sequences
    chosen = set(sorted(eligible, key=lambda u: hashlib.sha256(u.encode()).hexdigest())[:max_users])
    return {user: seq for user, seq in sequences.items() if user in chosen}


def k_core(sequences: Sequences, min_users_per_item: int, min_items_per_user: int) -> Sequences:
    """Iteratively drop items with too few users and users with too few items."""
    current = sequences
    while True:
        counts = Counter(item for seq in current.values() for item, _ in seq)
        filtered = {user: [p for p in seq if counts[p[0]] >= min_users_per_item] for user, seq in current.items()}
        filtered = {user: seq for user, seq in filtered.items() if len(seq) >= min_items_per_user}
        if sum(map(len, filtered.values())) == sum(map(len, current.values())) and len(filtered) == len(current):
            return filtered
        current = filtered


def filtering_for(dataset: str, max_users: int | None, max_items: int | None) -> Filtering:
    """The dataset's filtering with its caps overridden (``None`` = the dataset's cap, ``0`` = no cap)."""
    base = FILTERING[dataset]
    cap_u = base.max_users if max_users is None else (max_users or None)
    cap_i = base.max_items if max_items is None else (max_items or None)
    return Filtering(base.min_users_per_item, base.min_items_per_user, cap_i, cap_u)


def apply_filtering(sequences: Sequences, rules: Filtering) -> Sequences:
    """Item cap, user cap, then the iterated k-core (see :class:`Filtering`)."""
    sequences = cap_items(sequences, rules.max_items)
    sequences = cap_users(sequences, rules.max_users, rules.min_items_per_user)
    return k_core(sequences, rules.min_users_per_item, rules.min_items_per_user)


def split_users(sequences: Sequences) -> dict[str, list[str]]:
    """Users sorted by last-interaction time (ties: user id): first 80% train, next 10% val, rest test."""
    ordered = sorted(sequences, key=lambda user: (sequences[user][-1][1], id_key(user)))
    n_train = len(ordered) * 8 // 10
    n_val = len(ordered) // 10
    splits = {"train": ordered[:n_train], "val": ordered[n_train : n_train + n_val], "test": ordered[n_train + n_val :]}
    if not all(splits.values()):
        raise DataPreparationError(f"only {len(ordered)} users left after filtering: too few for an 8:1:1 split")
    return splits


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def clean_name(name: str, raw_id: str) -> str:
    """Make a name safe to join with ``::``.

    Whitespace runs become one space, ``::`` becomes ``:`` and leading/trailing
    colons are removed (``":wumpscut:"`` -> ``"wumpscut"``; a name ending in ``:``
    would make ``a:::b`` ambiguous). A name left empty becomes ``Item <id>``.
    """
    text = " ".join(name.split())
    while HISTORY_SEPARATOR in text:
        text = text.replace(HISTORY_SEPARATOR, ":")
    text = text.strip(": ")
    return " ".join(text.split()) or f"Item {raw_id}"


def unique_names(names: list[str]) -> list[str]:
    """Make names unique: the first holder keeps a name, later ones get `` (2)``, `` (3)``, ..."""
    taken = set(names)
    seen: set[str] = set()
    result = []
    for name in names:
        final = name
        if name in seen:
            suffix = 2
            while f"{name} ({suffix})" in taken:
                suffix += 1
            final = f"{name} ({suffix})"
            taken.add(final)
        seen.add(final)
        result.append(final)
    return result


# ---------------------------------------------------------------------------
# Samples and candidates
# ---------------------------------------------------------------------------


Sample = tuple[list[int], list[int], int]  # (history ids, candidate ids, target id)


class AllowedItems(SequenceABC):
    """The sorted list ``[0, n) minus excluded`` without materialising it."""

    def __init__(self, n_items: int, excluded: list[int]) -> None:
        ordered = sorted(excluded)
        # shifted[j] = number of allowed ids below the j-th excluded id (non-decreasing)
        self._shifted = [removed - j for j, removed in enumerate(ordered)]
        self._length = n_items - len(ordered)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> int:  # type: ignore[override]
        if not 0 <= index < self._length:
            raise IndexError(index)
        return index + bisect.bisect_right(self._shifted, index)


CANDIDATE_PROTOCOLS = ("original", "per_sample")


def sample_candidates(n_items: int, history: list[int], target: int, seed: int,
                      rng: random.Random | None = None) -> list[int]:
    """The target plus 19 items not in ``history`` nor the target, shuffled.

    By default uses ``random.Random(target + 1_000_003 * seed)``; with ``seed=0`` this is the
    original code's ``random.seed(target)`` followed by ``random.sample`` over the sorted allowed
    ids (the shuffle continues the same generator). Seeded by the target, samples with the same
    target share many negatives, which lets a model find the target from the list alone
    (``candidate_shortcut.py``); pass ``rng`` (e.g. one per sample) to draw them independently.
    """
    rng = rng if rng is not None else random.Random(target + SEED_STRIDE * seed)
    candidates = [*rng.sample(AllowedItems(n_items, [*history, target]), NUM_CANDIDATES - 1), target]
    rng.shuffle(candidates)
    return candidates


def make_samples(sequence: list[int], n_items: int, seed: int, candidates: str = "per_sample",
                 user: str = "") -> list[Sample]:
    """One ``(history, candidates, target)`` per position with at least 3 earlier items.

    ``candidates="original"``: negatives seeded by the target (the original code);
    ``"per_sample"``: a generator per sample, seeded by (seed, user, position), independent of the target.
    """
    if candidates not in CANDIDATE_PROTOCOLS:
        raise ValueError(f"candidates={candidates!r}: use one of {', '.join(CANDIDATE_PROTOCOLS)}")
    samples = []
    for position in range(MIN_HISTORY, len(sequence)):
        history = sequence[max(0, position - MAX_HISTORY) : position]
        target = sequence[position]
        rng = random.Random(f"{seed}:{user}:{position}") if candidates == "per_sample" else None
        samples.append((history, sample_candidates(n_items, history, target, seed, rng), target))
    return samples


def to_record(sample: Sample, names: list[str]) -> dict[str, Any]:
    """The S-DPO JSON record of a sample."""
    history, candidates, target = sample
    return {
        "historyList": HISTORY_SEPARATOR.join(names[i] for i in history),
        "itemList": [names[i] for i in candidates],
        "trueSelection": names[target],
    }


def dump_records(records: list[dict[str, Any]]) -> bytes:
    """A JSON list with one record per line (ASCII, escapes for other characters)."""
    if not records:
        return b"[]\n"
    return ("[\n" + ",\n".join(json.dumps(r, ensure_ascii=True) for r in records) + "\n]\n").encode("ascii")
