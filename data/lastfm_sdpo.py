"""The original S-DPO release's LastFM split files (``--dataset lastfm-sdpo``), used as published, not rebuilt.

From ``--raw_dir`` (or ``$SDPO_RAW_DIR``), else downloaded once from the authors' repository into
``$SDPO_CACHE_DIR/raw/lastfm-sdpo/``; every record is validated with the stage scripts' loader.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from data.download import cache_dir, download_file
from data.errors import DataPreparationError
from data.protocol import SPLITS

DOMAIN = "music"
#: The authors' public repository; its LastFM split files, by our split name.
SDPO_RELEASE_PAGE = "https://github.com/chenyuxin1999/S-DPO/tree/main/sample_data/lastfm-sft-cans20"
SDPO_RELEASE_BASE = "https://raw.githubusercontent.com/chenyuxin1999/S-DPO/HEAD/sample_data/lastfm-sft-cans20"
SDPO_RELEASE_FILES = {"train": "lastfm-train.json", "val": "lastfm-val.json", "test": "lastfm-test.json"}


def _release_hint() -> str:
    names = ", ".join(SDPO_RELEASE_FILES.values())
    return f"to work offline put {names} (from {SDPO_RELEASE_PAGE}) in a folder and pass --raw_dir DIR"


def load_release_records(path: Path) -> list:
    """Validate a split file with the stage scripts' own loader (data_interface.load_records)."""
    import data_interface  # the stage scripts' module, at the repository root

    try:
        return data_interface.load_records(path)
    except data_interface.DataError as exc:
        raise DataPreparationError(str(exc)) from None


def _validate_download(part: Path, url: str) -> None:
    try:
        load_release_records(part)
    except DataPreparationError as exc:  # name the download, not the temporary file
        raise DataPreparationError(str(exc).replace(str(part), url)) from None


def fetch_release(raw_dir: str | os.PathLike[str] | None) -> dict[str, Path]:
    """The three split files of the original release: from ``raw_dir`` (or ``$SDPO_RAW_DIR``), else
    downloaded once into ``$SDPO_CACHE_DIR/raw/lastfm-sdpo/`` (each validated before it is kept)."""
    chosen = raw_dir if raw_dir is not None else os.environ.get("SDPO_RAW_DIR") or None
    if chosen is not None:
        folder = Path(chosen).expanduser()
        if (folder / "lastfm-sft-cans20").is_dir():
            folder = folder / "lastfm-sft-cans20"
        for name in SDPO_RELEASE_FILES.values():
            if not (folder / name).is_file():
                raise DataPreparationError(f"{folder / name}: file missing; {_release_hint()}")
        return {split: folder / name for split, name in SDPO_RELEASE_FILES.items()}
    base = os.environ.get("SDPO_DOWNLOAD_BASE") or SDPO_RELEASE_BASE
    folder = cache_dir() / "lastfm-sdpo"
    paths = {}
    for split, name in SDPO_RELEASE_FILES.items():
        target = folder / name
        if not target.exists():
            url = f"{base.rstrip('/')}/{name}"
            download_file(url, target, _release_hint(), functools.partial(_validate_download, url=url))
        paths[split] = target
    return paths


def count_sequences(records: list) -> int:
    """Estimated number of users in a split of sliding-window records (the files hold no user ids):
    a record continues the previous one's user when its history is the previous history plus the
    previous target, cut to its own length."""
    users = 0
    previous = None
    for record in records:
        continued = previous is not None and record.history == (previous.history + (previous.target,))[-len(record.history):]
        users += not continued
        previous = record
    return users


def release_stats(records: dict[str, list], sha256: dict[str, str]) -> dict[str, Any]:
    """Counts of the release's splits: samples, distinct item names, estimated users, history length."""
    def names(split_records: list) -> set[str]:
        return {name for r in split_records for name in (*r.history, *r.candidates, r.target)}

    stats: dict[str, Any] = {"dataset": "lastfm-sdpo", "domain": DOMAIN, "source": SDPO_RELEASE_PAGE}
    every = [r for split in SPLITS for r in records[split]]
    stats["items"] = len(names(every))
    stats["samples"] = len(every)
    stats["mean_history_length"] = round(sum(len(r.history) for r in every) / len(every), 4)
    stats["splits"] = {
        split: {
            "users": count_sequences(records[split]),
            "samples": len(records[split]),
            "items": len(names(records[split])),
            "mean_history_length": round(sum(len(r.history) for r in records[split]) / len(records[split]), 4),
        }
        for split in SPLITS
    }
    stats["users"] = sum(split["users"] for split in stats["splits"].values())
    stats["users_note"] = "estimated: chains of sliding-window records (the files hold no user ids)"
    stats["files_sha256"] = sha256
    return stats


def build_release(raw_dir: str | os.PathLike[str] | None) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The original release's LastFM split files (validated, unchanged) as ``{train,val,test}.json`` with a
    ``stats.json`` recording their sha256 and counts; returns ``(files by name, stats)``, writes nothing."""
    paths = fetch_release(raw_dir)
    records = {split: load_release_records(path) for split, path in paths.items()}
    contents = {split: path.read_bytes() for split, path in paths.items()}
    sha256 = {SDPO_RELEASE_FILES[split]: hashlib.sha256(content).hexdigest() for split, content in contents.items()}
    stats = release_stats(records, sha256)
    files = {f"{split}.json": content for split, content in contents.items()}
    files["stats.json"] = (json.dumps(stats, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return files, stats
