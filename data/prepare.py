#!/usr/bin/env python3
"""Build S-DPO train/val/test files from the official raw recommendation datasets.

One command per dataset, from the repository root::

    python -m data.prepare --dataset lastfm    [--raw_dir DIR] [--out_dir DIR] [--seed S]
    python -m data.prepare --dataset movielens [--raw_dir DIR] [--out_dir DIR] [--seed S]
    python -m data.prepare --dataset lastfm --candidates original   # the original code's negatives: data/lastfm-original
    python -m data.prepare --dataset goodreads [--genre poetry] [--max_users N] [--max_items N]
    python -m data.prepare --dataset lastfm-sdpo [--raw_dir DIR]    # the original release's split files

(``python data/prepare.py ...`` runs the same command.) From Python: ``from data import prepare;
prepare.prepare("lastfm", raw_dir=...)``.

It writes ``train.json``, ``val.json``, ``test.json`` (a JSON list of
``{"historyList": "a::b::c", "itemList": [20 names], "trueSelection": name}``),
``id2name.txt`` (``id::name`` lines) and ``stats.json`` into ``data/<dataset>/``
(``data/<dataset>-original/`` with ``--candidates original``). The protocol (ordering, filtering, split, candidate sampling) is described in
``data/README.md`` next to this file.

Without ``--raw_dir`` (or the ``SDPO_RAW_DIR`` environment variable) the official
archive is downloaded once into ``~/.cache/sdpo/raw/`` (``$SDPO_CACHE_DIR/raw/``); the
download location can be redirected with ``SDPO_DOWNLOAD_BASE``.

Every problem with the input is reported as a :class:`DataPreparationError` whose
message is one line naming the file (and line number); nothing is written then.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python data/prepare.py ...`: run it as the module it is
    import os
    import sys
    from pathlib import Path

    _repo = str(Path(__file__).resolve().parents[1])
    _path = os.pathsep.join(p for p in (_repo, os.environ.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "data.prepare", *sys.argv[1:]]
    os.execve(sys.executable, command, {**os.environ, "PYTHONPATH": _path})

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.errors import DataPreparationError
from data.goodreads import DEFAULT_GENRE, GOODREADS_GENRES, read_goodreads
from data.lastfm import read_lastfm
from data.lastfm_sdpo import DOMAIN as RELEASE_DOMAIN
from data.lastfm_sdpo import build_release
from data.locate_raw_files import open_source
from data.movielens import read_movielens
from data.protocol import (
    CANDIDATE_PROTOCOLS,
    HISTORY_SEPARATOR,
    MAX_HISTORY,
    MIN_HISTORY,
    NUM_CANDIDATES,
    SEED_STRIDE,
    SPLITS,
    Filtering,
    Sample,
    Sequences,
    apply_filtering,
    build_sequences,
    clean_name,
    dump_records,
    filtering_for,
    id_key,
    make_samples,
    split_users,
    to_record,
    unique_names,
)
from data.raw_files import RawData, RawSource, raw_file_sha256

LOGGER = logging.getLogger("sdpo.data.prepare")

REPO_ROOT = Path(__file__).resolve().parents[1]

DATASETS = ("lastfm", "movielens", "goodreads", "lastfm-sdpo")
DOMAINS = {"lastfm": "music", "movielens": "movies", "goodreads": "books", "lastfm-sdpo": RELEASE_DOMAIN}

READERS: dict[str, Callable[[RawSource, str], RawData]] = {
    "lastfm": read_lastfm,
    "movielens": read_movielens,
    "goodreads": read_goodreads,
}


@dataclass
class Prepared:
    """Everything ``prepare`` writes, plus internals useful for checks."""

    files: dict[str, bytes]
    stats: dict[str, Any]
    split_users: dict[str, list[str]]
    last_time: dict[str, int]
    names: list[str]


def build(
    dataset: str,
    source: RawSource,
    seed: int = 0,
    genre: str = DEFAULT_GENRE,
    max_users: int | None = None,
    max_items: int | None = None,
    candidates: str = "per_sample",
) -> Prepared:
    """Read, filter, split and sample ``dataset`` from ``source``; nothing is written."""
    raw = READERS[dataset](source, genre)
    rules = filtering_for(dataset, max_users, max_items)
    all_sequences = build_sequences(raw.events)
    sequences = apply_filtering(all_sequences, rules)
    items = sorted({item for seq in sequences.values() for item, _ in seq}, key=id_key)
    if len(items) < NUM_CANDIDATES + MAX_HISTORY:
        raise DataPreparationError(
            f"only {len(items)} items left after filtering: need at least {NUM_CANDIDATES + MAX_HISTORY}"
        )
    index = {item: i for i, item in enumerate(items)}
    cleaned = [clean_name(raw.names[item], item) for item in items]
    names = unique_names(cleaned)
    splits = split_users(sequences)
    samples = {
        split: [s for u in users for s in make_samples([index[i] for i, _ in sequences[u]], len(items), seed,
                                             candidates, u)]
        for split, users in splits.items()
    }
    files = {f"{split}.json": dump_records([to_record(s, names) for s in samples[split]]) for split in SPLITS}
    files["id2name.txt"] = "".join(f"{i}{HISTORY_SEPARATOR}{name}\n" for i, name in enumerate(names)).encode("utf-8")
    stats: dict[str, Any] = {"dataset": dataset, "domain": DOMAINS[dataset], "seed": seed}
    if dataset == "goodreads":
        stats["genre"] = genre
    stats.update(_counts(sequences))
    stats.update(_sample_stats([s for split in SPLITS for s in samples[split]]))
    stats["splits"] = {split: {"users": len(splits[split]), **_sample_stats(samples[split])} for split in SPLITS}
    stats.update(_provenance(rules, raw, all_sequences, source, candidates))
    stats["renamed_duplicate_names"] = sum(1 for a, b in zip(cleaned, names, strict=True) if a != b)
    files["stats.json"] = (json.dumps(stats, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    last_time = {user: seq[-1][1] for user, seq in sequences.items()}
    return Prepared(files, stats, splits, last_time, names)


def _counts(sequences: Sequences) -> dict[str, int]:
    return {
        "users": len(sequences),
        "items": len({item for seq in sequences.values() for item, _ in seq}),
        "interactions": sum(map(len, sequences.values())),
    }


def _sample_stats(samples: list[Sample]) -> dict[str, Any]:
    total = sum(len(history) for history, _, _ in samples)
    return {"samples": len(samples), "mean_history_length": round(total / len(samples), 4) if samples else 0.0}


def _provenance(rules: Filtering, raw: RawData, all_sequences: Sequences, source: RawSource,
                candidates: str = "per_sample") -> dict[str, Any]:
    """Protocol constants, filtering, counts before filtering, dropped rows, raw file hashes."""
    return {
        "protocol": {
            "candidates": NUM_CANDIDATES,
            "min_history": MIN_HISTORY,
            "max_history": MAX_HISTORY,
            "split": "users by last-interaction time, 8:1:1",
            "candidate_protocol": candidates,
            "candidate_rng": (f"random.Random(target_id + {SEED_STRIDE} * seed)" if candidates == "original"
                              else 'random.Random(f"{seed}:{user_id}:{position}")'),
        },
        "filtering": {
            "min_users_per_item": rules.min_users_per_item,
            "min_items_per_user": rules.min_items_per_user,
            "max_items": rules.max_items,
            "max_users": rules.max_users,
        },
        "before_filtering": {"events": len(raw.events), **_counts(all_sequences)},
        "dropped_rows": raw.dropped,
        "raw_files_sha256": {name: raw_file_sha256(source, name) for name in raw.files},
    }


def write_outputs(files: dict[str, bytes], out_dir: Path) -> None:
    """Write all files to temporary names in ``out_dir``, then rename them into place."""
    temps: list[tuple[Path, Path]] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            temp = out_dir / f".{name}.tmp-{os.getpid()}"
            temp.write_bytes(content)
            temps.append((temp, out_dir / name))
        for temp, final in temps:
            os.replace(temp, final)
    except OSError as exc:
        raise DataPreparationError(f"cannot write to {out_dir} ({exc})") from None
    finally:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)


def _check_arguments(dataset: Any, seed: Any, genre: Any, candidates: Any = None) -> None:
    if dataset == "lastfm-sdpo" and candidates is not None:
        raise DataPreparationError(f"--candidates {candidates!r} does not apply to lastfm-sdpo: its candidate lists "
                                   "are the release's own, read as they are")
    if candidates is not None and candidates not in CANDIDATE_PROTOCOLS:
        raise DataPreparationError(f"--candidates {candidates!r}: use one of {', '.join(CANDIDATE_PROTOCOLS)} "
                                   "(per_sample: negatives drawn per sample, not seeded by the target)")
    if dataset not in DATASETS:
        raise DataPreparationError(
            f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)} "
            "(the synthetic dataset needs no preparation)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataPreparationError(f"--seed must be an integer, got {seed!r}")
    if dataset == "goodreads" and genre not in GOODREADS_GENRES:
        raise DataPreparationError(f"unknown Goodreads genre {genre!r}: choose one of {', '.join(GOODREADS_GENRES)}")


def default_out_dir(dataset: str, candidates: str | None = None) -> Path:
    """`data/<dataset>`, or `data/<dataset>-original` for the original code's candidates: the folder's name,
    which names the results folder of the harness, says which candidates it holds."""
    return REPO_ROOT / "data" / (f"{dataset}-original" if candidates == "original" else dataset)


def prepare(
    dataset: str,
    raw_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    genre: str = DEFAULT_GENRE,
    max_users: int | None = None,
    max_items: int | None = None,
    candidates: str | None = None,
) -> dict[str, Any]:
    """Prepare ``dataset`` and write it to ``out_dir`` (default `default_out_dir`).

    ``candidates``: ``"per_sample"`` (the default: each sample's negatives from its own generator) or
    ``"original"`` (the original code's: seeded by the target, which gives the answer away, data/README.md);
    not for ``lastfm-sdpo``, whose candidate lists are the release's.

    ``raw_dir`` (else ``$SDPO_RAW_DIR``, else a download into the cache) holds the
    raw files. ``max_users``/``max_items`` override the dataset's caps (0 = no cap).
    Returns the statistics also written to ``stats.json``. Raises
    :class:`DataPreparationError` (nothing written) on any input problem.
    """
    _check_arguments(dataset, seed, genre, candidates)
    target = Path(out_dir) if out_dir is not None else default_out_dir(dataset, candidates)
    if dataset == "lastfm-sdpo":
        files, stats = build_release(raw_dir)
        write_outputs(files, target)
        LOGGER.info("wrote %s", target)
        return stats
    source = open_source(dataset, raw_dir, genre)
    prepared = build(dataset, source, seed, genre, max_users, max_items, candidates or "per_sample")
    write_outputs(prepared.files, target)
    LOGGER.info("wrote %s", target)
    return prepared.stats


def format_stats(stats: dict[str, Any]) -> str:
    """A small human-readable table of the statistics."""
    users = f"{stats['users']} users" if "interactions" in stats else f"about {stats['users']} users (estimated)"
    interactions = f"{stats['interactions']} interactions, " if "interactions" in stats else ""
    lines = [
        f"{stats['dataset']} ({stats['domain']}): {users}, {stats['items']} items, {interactions}"
        f"{stats['samples']} samples, mean history length {stats['mean_history_length']}",
        f"{'split':<6} {'users':>7} {'samples':>8} {'mean history':>13}",
    ]
    for split in SPLITS:
        s = stats["splits"][split]
        lines.append(f"{split:<6} {s['users']:>7} {s['samples']:>8} {s['mean_history_length']:>13}")
    return "\n".join(lines)


def main(
    dataset: str,
    raw_dir: str | None = None,
    out_dir: str | None = None,
    seed: int = 0,
    genre: str = DEFAULT_GENRE,
    max_users: int | None = None,
    max_items: int | None = None,
    candidates: str | None = None,
) -> None:
    """Command line entry point: prepare one dataset and print its statistics.

    Args:
        dataset: lastfm, movielens, goodreads, or lastfm-sdpo (the original release's split files).
        raw_dir: a local copy of the raw archive (else $SDPO_RAW_DIR, else a download into the cache).
        out_dir: where the files go; default data/<dataset>, or data/<dataset>-original with
            `--candidates original`.
        seed: the candidate sampling seed.
        genre: the Goodreads genre subset.
        max_users: a cap on users (0 = none; Goodreads has a default).
        max_items: a cap on items (0 = none; Goodreads has a default).
        candidates: per_sample (the default when not given: each sample's negatives from its own generator) or
            original (the original code's, seeded by the target: they give the answer away, data/README.md).
            Not for lastfm-sdpo, whose candidate lists are the release's.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        stats = prepare(dataset, raw_dir, out_dir, seed, genre, max_users, max_items, candidates)
    except DataPreparationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(format_stats(stats))
    print(f"written to {Path(out_dir) if out_dir is not None else default_out_dir(dataset, candidates)}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
