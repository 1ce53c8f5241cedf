#!/usr/bin/env python3
"""Build S-DPO train/val/test files from the official raw recommendation datasets.

One command per dataset::

    python data/prepare.py --dataset lastfm    [--raw_dir DIR] [--out_dir DIR] [--seed S]
    python data/prepare.py --dataset movielens [--raw_dir DIR] [--out_dir DIR] [--seed S]
    python data/prepare.py --dataset goodreads [--genre poetry] [--max_users N] [--max_items N]
    python data/prepare.py --dataset lastfm-sdpo [--raw_dir DIR]    # the original release's split files

It writes ``train.json``, ``val.json``, ``test.json`` (a JSON list of
``{"historyList": "a::b::c", "itemList": [20 names], "trueSelection": name}``),
``id2name.txt`` (``id::name`` lines) and ``stats.json`` into ``data/<dataset>/``.
The protocol (ordering, filtering, split, candidate sampling) is described in
``data/README.md`` next to this file.

Without ``--raw_dir`` (or the ``SDPO_RAW_DIR`` environment variable) the official
archive is downloaded once into ``~/.cache/sdpo/raw/`` (``$SDPO_CACHE_DIR/raw/``); the
download location can be redirected with ``SDPO_DOWNLOAD_BASE``.

Every problem with the input is reported as a :class:`DataPreparationError` whose
message is one line naming the file (and line number); nothing is written then.
"""

from __future__ import annotations

import bisect
import calendar
import gzip
import hashlib
import http.client
import json
import logging
import os
import random
import re
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LOGGER = logging.getLogger("sdpo.data.prepare")

REPO_ROOT = Path(__file__).resolve().parents[1]

DATASETS = ("lastfm", "movielens", "goodreads", "lastfm-sdpo")
DOMAINS = {"lastfm": "music", "movielens": "movies", "goodreads": "books", "lastfm-sdpo": "music"}

NUM_CANDIDATES = 20
MIN_HISTORY = 3
MAX_HISTORY = 10
SEED_STRIDE = 1_000_003
HISTORY_SEPARATOR = "::"
SPLITS = ("train", "val", "test")

DEFAULT_GENRE = "poetry"
GOODREADS_GENRES = (
    "children",
    "comics_graphic",
    "fantasy_paranormal",
    "history_biography",
    "mystery_thriller_crime",
    "poetry",
    "romance",
    "young_adult",
)


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
# Downloads
# ---------------------------------------------------------------------------

#: Official download locations, by dataset (Goodreads: ``{genre}`` is filled in).
DOWNLOAD_URLS: dict[str, tuple[str, ...]] = {
    "movielens": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip",),
    "lastfm": ("https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",),
    "goodreads": (
        "https://datarepo.eng.ucsd.edu/mcauley_group/gdrive/goodreads/byGenre/goodreads_interactions_{genre}.json.gz",
        "https://datarepo.eng.ucsd.edu/mcauley_group/gdrive/goodreads/byGenre/goodreads_books_{genre}.json.gz",
    ),
}

#: Expected (size in bytes, sha256) of each downloaded file; ``None`` = unknown, in
#: which case only the archive's integrity (zip CRCs / gzip stream) and members are checked.
EXPECTED_CHECKSUMS: dict[str, tuple[int | None, str | None]] = {
    "ml-100k.zip": (None, None),
    "hetrec2011-lastfm-2k.zip": (None, None),
}

DOWNLOAD_TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20

#: Sub-folders (of ``--raw_dir``) where the raw files of a dataset are looked for.
RAW_SUBFOLDERS = {
    "lastfm": ("lastfm-2k", "hetrec2011-lastfm-2k", "lastfm"),
    "movielens": ("ml-100k", "movielens"),
    "goodreads": ("goodreads", "byGenre"),
}

LASTFM_ARTISTS = "artists.dat"
LASTFM_TIMESTAMPS = "user_taggedartists-timestamps.dat"
LASTFM_DATES = "user_taggedartists.dat"
ML_RATINGS = "u.data"
ML_ITEMS = "u.item"


class DataPreparationError(ValueError):
    """A problem with the raw data or the environment, described in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


def required_files(dataset: str, genre: str = DEFAULT_GENRE) -> list[tuple[str, ...]]:
    """Raw files needed for ``dataset``; each entry lists alternatives (the first present wins)."""
    if dataset == "lastfm":
        return [(LASTFM_ARTISTS,), (LASTFM_TIMESTAMPS, LASTFM_DATES)]
    if dataset == "movielens":
        return [(ML_RATINGS,), (ML_ITEMS,)]
    return [(f"goodreads_interactions_{genre}.json.gz",), (f"goodreads_books_{genre}.json.gz",)]


def download_urls(dataset: str, genre: str = DEFAULT_GENRE) -> list[str]:
    """URLs to fetch for ``dataset``, honouring the ``SDPO_DOWNLOAD_BASE`` override."""
    urls = [url.format(genre=genre) for url in DOWNLOAD_URLS[dataset]]
    base = os.environ.get("SDPO_DOWNLOAD_BASE")
    if base:
        urls = [f"{base.rstrip('/')}/{url.rsplit('/', 1)[1]}" for url in urls]
    return urls


def cache_dir() -> Path:
    """Folder where downloaded archives are kept: ``$SDPO_CACHE_DIR/raw`` (default ``~/.cache/sdpo/raw``).

    ``SDPO_CACHE_DIR`` is the project-wide cache root (built models live there too).
    """
    root = os.environ.get("SDPO_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "sdpo") / "raw"


def offline_hint(dataset: str, genre: str) -> str:
    """The advice given when the raw data cannot be downloaded."""
    names = [url.rsplit("/", 1)[1] for url in download_urls(dataset, genre)]
    local = (
        f"a local copy of {names[0]} (or of its extracted files)"
        if len(names) == 1
        else f"a folder holding {' and '.join(names)}"
    )
    return (
        f"to work offline pass --raw_dir DIR (or set SDPO_RAW_DIR) to {local}, "
        "or use --dataset synthetic in the stage scripts"
    )


def _open_url(url: str, hint: str) -> http.client.HTTPResponse:
    """Connect to ``url``; any failure (offline, refused, HTTP error) is one clear line."""
    try:
        return urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise DataPreparationError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; {hint}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataPreparationError(f"cannot download {url} ({reason}); {hint}") from None


def _stream_to_file(response: http.client.HTTPResponse, url: str, target: Path, hint: str) -> None:
    """Copy the body of ``response`` into ``target`` with a progress bar; fail on short reads."""
    from tqdm import tqdm

    length_header = response.headers.get("Content-Length")
    expected = int(length_header) if length_header and length_header.isdigit() else None
    received = 0
    with (
        target.open("wb") as sink,
        tqdm(total=expected, unit="B", unit_scale=True, desc=target.name.removesuffix(".part")) as bar,
    ):
        try:
            while chunk := response.read(CHUNK_BYTES):
                sink.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (http.client.HTTPException, OSError) as exc:
            raise DataPreparationError(
                f"download of {url} was truncated after {received} bytes ({type(exc).__name__}); retry, or {hint}"
            ) from None
    if expected is not None and received != expected:
        raise DataPreparationError(
            f"download of {url} was truncated: got {received} of {expected} bytes; retry, or {hint}"
        )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_archive(path: Path, name: str, required: list[tuple[str, ...]], advice: str) -> None:
    """Check size/sha256 (when known) and integrity of a downloaded archive.

    ``name`` is the archive's official file name; ``advice`` is appended to the error.
    """
    size, sha256 = EXPECTED_CHECKSUMS.get(name, (None, None))
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DataPreparationError(f"{path}: {actual} bytes, expected {size} (truncated or corrupt archive); {advice}")
    if sha256 is not None and _sha256_of(path) != sha256:
        raise DataPreparationError(f"{path}: sha256 mismatch (corrupt archive); {advice}")
    if name.endswith(".zip"):
        _verify_zip(path, required, advice)
    elif name.endswith(".gz"):
        _verify_gzip(path, advice)


def _verify_zip(path: Path, required: list[tuple[str, ...]], advice: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            basenames = {_basename(member) for member in archive.namelist()}
            missing = [alts[0] for alts in required if not any(alt in basenames for alt in alts)]
            if missing:
                raise DataPreparationError(f"{path}: archive lacks {', '.join(missing)}; {advice}")
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DataPreparationError(f"{path}: not a valid zip archive, truncated or corrupt ({exc}); {advice}") from None
    if bad is not None:
        raise DataPreparationError(f"{path}: member {bad} fails its CRC check (corrupt archive); {advice}")


def _verify_gzip(path: Path, advice: str) -> None:
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(CHUNK_BYTES * 8):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise DataPreparationError(f"{path}: not a valid gzip file, truncated or corrupt ({exc}); {advice}") from None


def _basename(member: str) -> str:
    """Base name of a zip member path."""
    return member.rstrip("/").rsplit("/", 1)[-1]


def fetch(dataset: str, genre: str = DEFAULT_GENRE) -> list[Path]:
    """Return the cached official archive(s) of ``dataset``, downloading them if needed."""
    folder = cache_dir()
    required = required_files(dataset, genre)
    hint = offline_hint(dataset, genre)
    paths = []
    for url in download_urls(dataset, genre):
        name = url.rsplit("/", 1)[1]
        needed = required if name.endswith(".zip") else []
        target = folder / name
        if target.exists():
            verify_archive(target, name, needed, f"delete {target} and re-run")
        else:
            _download_verified(url, target, needed, hint)
        paths.append(target)
    return paths


def _download_verified(url: str, target: Path, required: list[tuple[str, ...]], hint: str) -> None:
    """Download ``url`` to ``target`` through a ``.part`` file, keeping it only if it verifies."""
    with _open_url(url, hint) as response:
        LOGGER.info("downloading %s -> %s", url, target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataPreparationError(
                f"cannot create cache folder {target.parent} ({exc}); set SDPO_CACHE_DIR"
            ) from None
        part = target.with_name(target.name + ".part")
        try:
            _stream_to_file(response, url, part, hint)
            verify_archive(part, target.name, required, f"retry, or {hint}")
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Raw sources: a folder or a zip archive
# ---------------------------------------------------------------------------


class RawSource:
    """Read-only access to the raw files of a dataset."""

    def has(self, name: str) -> bool:
        """Whether the raw file ``name`` is available."""
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        """Open the raw file ``name`` for binary reading."""
        raise NotImplementedError

    def where(self, name: str) -> str:
        """Human-readable location of ``name`` for error messages."""
        raise NotImplementedError


class DirSource(RawSource):
    """Raw files lying directly in a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def has(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def open(self, name: str) -> IO[bytes]:
        return (self.folder / name).open("rb")

    def where(self, name: str) -> str:
        return str(self.folder / name)


class ZipSource(RawSource):
    """Raw files inside a zip archive, found by base name at any depth."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DataPreparationError(f"{path}: not a valid zip archive, truncated or corrupt ({exc})") from None
        members: dict[str, str] = {}
        for member in sorted(self.archive.namelist(), key=lambda m: (m.count("/"), m)):
            if member.endswith("/") or member.startswith("__MACOSX/"):
                continue
            members.setdefault(_basename(member), member)
        self.members = members

    def has(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        return self.archive.open(self.members[name])

    def where(self, name: str) -> str:
        return f"{self.path}:{self.members.get(name, name)}"


def _missing(source: RawSource, required: list[tuple[str, ...]]) -> list[str]:
    return [" or ".join(alts) for alts in required if not any(source.has(alt) for alt in alts)]


def _zip_sources(folder: Path, dataset: str, genre: str) -> list[Path]:
    names = [url.rsplit("/", 1)[1] for url in DOWNLOAD_URLS[dataset]]
    return [folder / name.format(genre=genre) for name in names if name.endswith(".zip")]


def resolve_source(dataset: str, raw_dir: str | os.PathLike[str], genre: str = DEFAULT_GENRE) -> RawSource:
    """Find the raw files of ``dataset`` under ``raw_dir``.

    Accepted: the folder holding the files, a parent holding the archive's folder
    (e.g. ``ml-100k/``) or any direct sub-folder holding them, the official zip
    archive itself, or a folder containing that archive.
    """
    path = Path(raw_dir).expanduser()
    required = required_files(dataset, genre)
    if not path.exists():
        raise DataPreparationError(f"raw data folder {path} does not exist (from --raw_dir or SDPO_RAW_DIR)")
    if path.is_file():
        return _checked(ZipSource(path), required)
    known = [path] + [path / sub for sub in RAW_SUBFOLDERS[dataset]]
    others = sorted(child for child in path.iterdir() if child.is_dir() and child not in known)
    found = _find_in_folders(known, required)
    if found is None:
        archive = next((a for a in _zip_sources(path, dataset, genre) if a.is_file()), None)
        found = ZipSource(archive) if archive is not None else _find_in_folders(others, required)
    if found is not None:
        return _checked(found, required)
    wanted = ", ".join(" or ".join(alts) for alts in required)
    raise DataPreparationError(
        f"{path}: no {dataset} raw files found (need {wanted}); point --raw_dir at the folder holding them"
    )


def _find_in_folders(folders: list[Path], required: list[tuple[str, ...]]) -> RawSource | None:
    """The first folder holding at least one of the required files."""
    for folder in folders:
        source = DirSource(folder)
        if folder.is_dir() and len(_missing(source, required)) < len(required):
            return source
    return None


def _checked(source: RawSource, required: list[tuple[str, ...]]) -> RawSource:
    missing = _missing(source, required)
    if missing:
        raise DataPreparationError(f"{source.where(missing[0].split(' or ')[0])}: raw file missing")
    return source


def open_source(dataset: str, raw_dir: str | os.PathLike[str] | None, genre: str = DEFAULT_GENRE) -> RawSource:
    """The raw files to use: ``raw_dir``, else ``$SDPO_RAW_DIR``, else the (downloaded) cache."""
    chosen = raw_dir if raw_dir is not None else os.environ.get("SDPO_RAW_DIR") or None
    if chosen is not None:
        return resolve_source(dataset, chosen, genre)
    paths = fetch(dataset, genre)
    if len(paths) == 1 and paths[0].suffix == ".zip":
        return _checked(ZipSource(paths[0]), required_files(dataset, genre))
    return _checked(DirSource(paths[0].parent), required_files(dataset, genre))


# ---------------------------------------------------------------------------
# Line reading helpers
# ---------------------------------------------------------------------------


def _decode(line: bytes, encoding: str) -> str:
    if encoding == "utf-8-or-latin-1":
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            return line.decode("latin-1")
    return line.decode(encoding)


def read_lines(source: RawSource, name: str, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` for the non-blank lines of a raw file (gzip-aware).

    ``encoding`` may be ``"utf-8-or-latin-1"``: each line is decoded as UTF-8 and,
    if that fails, as Latin-1.
    """
    where = source.where(name)
    try:
        with source.open(name) as raw:
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if name.endswith(".gz") else raw
            for lineno, line in enumerate(stream, 1):
                try:
                    text = _decode(line, encoding).rstrip("\r\n")
                except UnicodeDecodeError:
                    raise DataPreparationError(f"{where}:{lineno}: not valid {encoding} text") from None
                if text.strip():
                    yield lineno, text
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataPreparationError(f"{where}: cannot read, truncated or corrupt ({exc})") from None


def _split(text: str, sep: str, columns: int, where: str, lineno: int) -> list[str]:
    parts = text.split(sep)
    if len(parts) != columns:
        raise DataPreparationError(
            f"{where}:{lineno}: expected {columns} columns separated by {sep!r}, got {len(parts)}"
        )
    return parts


def _int(value: str, column: str, where: str, lineno: int) -> int:
    if value.isascii() and value.isdigit():
        return int(value)
    value = value.strip()
    if not re.fullmatch(r"-?\d+", value):
        raise DataPreparationError(f"{where}:{lineno}: column {column} is not an integer: {value[:40]!r}")
    return int(value)


def _is_header(lineno: int, text: str, first_column: str) -> bool:
    return lineno == 1 and text.split("\t", 1)[0].strip().lower() == first_column.lower()


# ---------------------------------------------------------------------------
# Dataset readers
# ---------------------------------------------------------------------------


@dataclass
class RawData:
    """Interactions in file order plus item names, as read from the raw files.

    ``events`` holds ``(user id, item id, time)``; times are comparable within a
    dataset only. ``dropped`` counts rows skipped on purpose (documented).
    """

    events: list[tuple[str, str, int]]
    names: dict[str, str]
    files: list[str]
    dropped: dict[str, int] = field(default_factory=dict)


def read_lastfm(source: RawSource, genre: str = DEFAULT_GENRE) -> RawData:
    """Read HetRec 2011 Last.fm: artists and their first tagging time per user."""
    names = _read_lastfm_artists(source)
    if source.has(LASTFM_TIMESTAMPS):
        events_file, rows = LASTFM_TIMESTAMPS, _lastfm_timestamp_rows(source)
    else:
        events_file, rows = LASTFM_DATES, _lastfm_date_rows(source)
    events, unknown = [], 0
    for user, artist, time in rows:
        if artist in names:
            events.append((user, artist, time))
        else:
            unknown += 1
    return RawData(events, names, [LASTFM_ARTISTS, events_file], {"tag_rows_with_unknown_artist": unknown})


def _read_lastfm_artists(source: RawSource) -> dict[str, str]:
    where = source.where(LASTFM_ARTISTS)
    names: dict[str, str] = {}
    for lineno, text in read_lines(source, LASTFM_ARTISTS, "utf-8-or-latin-1"):
        if _is_header(lineno, text, "id"):
            continue
        artist, name, _url, _picture = _split(text, "\t", 4, where, lineno)
        key = str(_int(artist, "id", where, lineno))
        if key in names:
            raise DataPreparationError(f"{where}:{lineno}: duplicate artist id {key}")
        names[key] = name
    return names


def _lastfm_timestamp_rows(source: RawSource) -> Iterator[tuple[str, str, int]]:
    where = source.where(LASTFM_TIMESTAMPS)
    for lineno, text in read_lines(source, LASTFM_TIMESTAMPS, "utf-8-or-latin-1"):
        if _is_header(lineno, text, "userID"):
            continue
        user, artist, tag, stamp = _split(text, "\t", 4, where, lineno)
        _int(tag, "tagID", where, lineno)
        yield (
            str(_int(user, "userID", where, lineno)),
            str(_int(artist, "artistID", where, lineno)),
            _int(stamp, "timestamp", where, lineno),
        )


def _lastfm_date_rows(source: RawSource) -> Iterator[tuple[str, str, int]]:
    where = source.where(LASTFM_DATES)
    for lineno, text in read_lines(source, LASTFM_DATES, "utf-8-or-latin-1"):
        if _is_header(lineno, text, "userID"):
            continue
        user, artist, tag, day, month, year = _split(text, "\t", 6, where, lineno)
        _int(tag, "tagID", where, lineno)
        d, m, y = (_int(v, c, where, lineno) for v, c in ((day, "day"), (month, "month"), (year, "year")))
        if not (1 <= d <= 31 and 1 <= m <= 12):
            raise DataPreparationError(f"{where}:{lineno}: invalid date day={d} month={m} year={y}")
        yield (
            str(_int(user, "userID", where, lineno)),
            str(_int(artist, "artistID", where, lineno)),
            y * 10_000 + m * 100 + d,
        )


def read_movielens(source: RawSource, genre: str = DEFAULT_GENRE) -> RawData:
    """Read MovieLens 100K: ratings with their timestamps and cleaned movie titles."""
    names = _read_movielens_items(source)
    where = source.where(ML_RATINGS)
    events = []
    for lineno, text in read_lines(source, ML_RATINGS, "latin-1"):
        user, item, rating, stamp = _split(text, "\t", 4, where, lineno)
        user_id, item_id = _int(user, "user id", where, lineno), _int(item, "item id", where, lineno)
        _int(rating, "rating", where, lineno)
        if str(item_id) not in names:
            raise DataPreparationError(f"{where}:{lineno}: unknown item id {item_id} (not in {ML_ITEMS})")
        events.append((str(user_id), str(item_id), _int(stamp, "timestamp", where, lineno)))
    return RawData(events, names, [ML_RATINGS, ML_ITEMS])


def _read_movielens_items(source: RawSource) -> dict[str, str]:
    where = source.where(ML_ITEMS)
    names: dict[str, str] = {}
    for lineno, text in read_lines(source, ML_ITEMS, "latin-1"):
        parts = _split(text, "|", 24, where, lineno)
        key = str(_int(parts[0], "movie id", where, lineno))
        if key in names:
            raise DataPreparationError(f"{where}:{lineno}: duplicate movie id {key}")
        names[key] = movielens_title(parts[1])
    return names


_YEAR = re.compile(r"\s*\(\d{4}\)(?:\s*\(V\))?\s*$")
_ARTICLE = re.compile(r"^(?P<title>.+?), (?P<article>The|A|An)(?P<alias>\s+\([^()]*\))?$")


def movielens_title(raw: str) -> str:
    """``"Usual Suspects, The (1995)"`` -> ``"The Usual Suspects"``.

    Removes the trailing year (and a ``(V)`` video marker after it) and moves a
    trailing English article to the front, also when an alternative title in
    brackets follows it (``"Big Blue, The (Grand bleu, Le)"`` -> ``"The Big Blue (Grand bleu, Le)"``).
    """
    title = _YEAR.sub("", raw.strip())
    match = _ARTICLE.match(title)
    if match:
        title = f"{match['article']} {match['title']}{match['alias'] or ''}"
    return title


def read_goodreads(source: RawSource, genre: str = DEFAULT_GENRE) -> RawData:
    """Read a UCSD Book Graph genre subset: shelf additions ordered by ``date_added``."""
    books_file = f"goodreads_books_{genre}.json.gz"
    interactions_file = f"goodreads_interactions_{genre}.json.gz"
    names = _read_goodreads_books(source, books_file)
    where = source.where(interactions_file)
    events, dropped = [], Counter({"interactions_without_date": 0, "interactions_with_unknown_book": 0})
    for lineno, text in read_lines(source, interactions_file):
        record = _json_object(text, where, lineno)
        user, book, added = (_json_field(record, key, where, lineno) for key in ("user_id", "book_id", "date_added"))
        if not added.strip():
            dropped["interactions_without_date"] += 1
            continue
        if book not in names:
            dropped["interactions_with_unknown_book"] += 1
            continue
        events.append((user, book, _goodreads_time(added, where, lineno)))
    return RawData(events, names, [interactions_file, books_file], dict(dropped))


def _read_goodreads_books(source: RawSource, name: str) -> dict[str, str]:
    where = source.where(name)
    names: dict[str, str] = {}
    for lineno, text in read_lines(source, name):
        record = _json_object(text, where, lineno)
        book = _json_field(record, "book_id", where, lineno)
        title = str(record.get("title") or "").strip() or str(record.get("title_without_series") or "")
        names.setdefault(book, goodreads_title(title))
    return names


def _json_object(text: str, where: str, lineno: int) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataPreparationError(f"{where}:{lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise DataPreparationError(f"{where}:{lineno}: expected a JSON object")
    return record


def _json_field(record: dict[str, Any], key: str, where: str, lineno: int) -> str:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataPreparationError(f"{where}:{lineno}: field {key!r} missing or not a string")
    return str(value)


_SERIES = re.compile(r"\s*\([^()]*#[^()]*\)\s*$")


def goodreads_title(title: str) -> str:
    """Cut a trailing series bracket: ``"Title (Series, #1)"`` -> ``"Title"``."""
    return _SERIES.sub("", title.strip()) or title.strip()


_MONTHS = {
    m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)
}
_GOODREADS_DATE = re.compile(r"\w{3} (\w{3}) (\d{2}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2}) (\d{4})")


def _goodreads_time(text: str, where: str, lineno: int) -> int:
    """Parse ``"Mon Aug 01 13:41:57 -0700 2011"`` to seconds since the epoch (UTC)."""
    match = _GOODREADS_DATE.fullmatch(text.strip())
    if not match or match[1] not in _MONTHS:
        raise DataPreparationError(f"{where}:{lineno}: unparseable date_added {text[:40]!r}")
    month, day, hour, minute, second = _MONTHS[match[1]], *(int(match[i]) for i in range(2, 6))
    offset = (int(match[7]) * 3600 + int(match[8]) * 60) * (-1 if match[6] == "-" else 1)
    return calendar.timegm((int(match[9]), month, day, hour, minute, second, 0, 0, 0)) - offset


READERS: dict[str, Callable[[RawSource, str], RawData]] = {
    "lastfm": read_lastfm,
    "movielens": read_movielens,
    "goodreads": read_goodreads,
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


class _AllowedItems(SequenceABC):
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


def sample_candidates(n_items: int, history: list[int], target: int, seed: int) -> list[int]:
    """The target plus 19 items not in ``history`` nor the target, shuffled.

    Uses ``random.Random(target + 1_000_003 * seed)``; with ``seed=0`` this is the
    original code's ``random.seed(target)`` followed by ``random.sample`` over the
    sorted allowed ids (the shuffle continues the same generator).
    """
    rng = random.Random(target + SEED_STRIDE * seed)
    candidates = [*rng.sample(_AllowedItems(n_items, [*history, target]), NUM_CANDIDATES - 1), target]
    rng.shuffle(candidates)
    return candidates


def make_samples(sequence: list[int], n_items: int, seed: int) -> list[Sample]:
    """One ``(history, candidates, target)`` per position with at least 3 earlier items."""
    samples = []
    for position in range(MIN_HISTORY, len(sequence)):
        history = sequence[max(0, position - MAX_HISTORY) : position]
        target = sequence[position]
        samples.append((history, sample_candidates(n_items, history, target, seed), target))
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


# ---------------------------------------------------------------------------
# The original S-DPO release's LastFM split (used as published, not rebuilt)
# ---------------------------------------------------------------------------

#: The authors' public repository; its LastFM split files, by our split name.
SDPO_RELEASE_PAGE = "https://github.com/chenyuxin1999/S-DPO/tree/main/sample_data/lastfm-sft-cans20"
SDPO_RELEASE_BASE = "https://raw.githubusercontent.com/chenyuxin1999/S-DPO/HEAD/sample_data/lastfm-sft-cans20"
SDPO_RELEASE_FILES = {"train": "lastfm-train.json", "val": "lastfm-val.json", "test": "lastfm-test.json"}


def _release_hint() -> str:
    names = ", ".join(SDPO_RELEASE_FILES.values())
    return f"to work offline put {names} (from {SDPO_RELEASE_PAGE}) in a folder and pass --raw_dir DIR"


def _load_records(path: Path) -> list:
    """Validate a split file with the stage scripts' own loader (data_interface.load_records)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import data_interface

    try:
        return data_interface.load_records(path)
    except data_interface.DataError as exc:
        raise DataPreparationError(str(exc)) from None


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
            with _open_url(url, _release_hint()) as response:
                LOGGER.info("downloading %s -> %s", url, target)
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(name + ".part")
                try:
                    _stream_to_file(response, url, part, _release_hint())
                    try:
                        _load_records(part)
                    except DataPreparationError as exc:  # name the download, not the temporary file
                        raise DataPreparationError(str(exc).replace(str(part), url)) from None
                    os.replace(part, target)
                finally:
                    part.unlink(missing_ok=True)
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

    stats: dict[str, Any] = {"dataset": "lastfm-sdpo", "domain": DOMAINS["lastfm-sdpo"], "source": SDPO_RELEASE_PAGE}
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


def prepare_release(raw_dir: str | os.PathLike[str] | None, out_dir: Path) -> dict[str, Any]:
    """Copy the original release's LastFM split files (validated, unchanged) into ``out_dir`` as
    ``{train,val,test}.json`` with a ``stats.json`` recording their sha256 and counts."""
    paths = fetch_release(raw_dir)
    records = {split: _load_records(path) for split, path in paths.items()}
    contents = {split: path.read_bytes() for split, path in paths.items()}
    sha256 = {SDPO_RELEASE_FILES[split]: hashlib.sha256(content).hexdigest() for split, content in contents.items()}
    stats = release_stats(records, sha256)
    files = {f"{split}.json": content for split, content in contents.items()}
    files["stats.json"] = (json.dumps(stats, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    write_outputs(files, out_dir)
    return stats


# ---------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything ``prepare`` writes, plus internals useful for checks."""

    files: dict[str, bytes]
    stats: dict[str, Any]
    split_users: dict[str, list[str]]
    last_time: dict[str, int]
    names: list[str]


def _filtering(dataset: str, max_users: int | None, max_items: int | None) -> Filtering:
    base = FILTERING[dataset]
    cap_u = base.max_users if max_users is None else (max_users or None)
    cap_i = base.max_items if max_items is None else (max_items or None)
    return Filtering(base.min_users_per_item, base.min_items_per_user, cap_i, cap_u)


def apply_filtering(sequences: Sequences, rules: Filtering) -> Sequences:
    """Item cap, user cap, then the iterated k-core (see :class:`Filtering`)."""
    sequences = cap_items(sequences, rules.max_items)
    sequences = cap_users(sequences, rules.max_users, rules.min_items_per_user)
    return k_core(sequences, rules.min_users_per_item, rules.min_items_per_user)


def build(
    dataset: str,
    source: RawSource,
    seed: int = 0,
    genre: str = DEFAULT_GENRE,
    max_users: int | None = None,
    max_items: int | None = None,
) -> Prepared:
    """Read, filter, split and sample ``dataset`` from ``source``; nothing is written."""
    raw = READERS[dataset](source, genre)
    rules = _filtering(dataset, max_users, max_items)
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
        split: [s for u in users for s in make_samples([index[i] for i, _ in sequences[u]], len(items), seed)]
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
    stats.update(_provenance(rules, raw, all_sequences, source))
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


def _file_sha256(source: RawSource, name: str) -> str:
    digest = hashlib.sha256()
    try:
        with source.open(name) as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataPreparationError(f"{source.where(name)}: cannot read, truncated or corrupt ({exc})") from None
    return digest.hexdigest()


def _provenance(rules: Filtering, raw: RawData, all_sequences: Sequences, source: RawSource) -> dict[str, Any]:
    """Protocol constants, filtering, counts before filtering, dropped rows, raw file hashes."""
    return {
        "protocol": {
            "candidates": NUM_CANDIDATES,
            "min_history": MIN_HISTORY,
            "max_history": MAX_HISTORY,
            "split": "users by last-interaction time, 8:1:1",
            "candidate_rng": f"random.Random(target_id + {SEED_STRIDE} * seed)",
        },
        "filtering": {
            "min_users_per_item": rules.min_users_per_item,
            "min_items_per_user": rules.min_items_per_user,
            "max_items": rules.max_items,
            "max_users": rules.max_users,
        },
        "before_filtering": {"events": len(raw.events), **_counts(all_sequences)},
        "dropped_rows": raw.dropped,
        "raw_files_sha256": {name: _file_sha256(source, name) for name in raw.files},
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


def _check_arguments(dataset: Any, seed: Any, genre: Any) -> None:
    if dataset not in DATASETS:
        raise DataPreparationError(
            f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)} "
            "(the synthetic dataset needs no preparation)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataPreparationError(f"--seed must be an integer, got {seed!r}")
    if dataset == "goodreads" and genre not in GOODREADS_GENRES:
        raise DataPreparationError(f"unknown Goodreads genre {genre!r}: choose one of {', '.join(GOODREADS_GENRES)}")


def prepare(
    dataset: str,
    raw_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    genre: str = DEFAULT_GENRE,
    max_users: int | None = None,
    max_items: int | None = None,
) -> dict[str, Any]:
    """Prepare ``dataset`` and write it to ``out_dir`` (default ``data/<dataset>/``).

    ``raw_dir`` (else ``$SDPO_RAW_DIR``, else a download into the cache) holds the
    raw files. ``max_users``/``max_items`` override the dataset's caps (0 = no cap).
    Returns the statistics also written to ``stats.json``. Raises
    :class:`DataPreparationError` (nothing written) on any input problem.
    """
    _check_arguments(dataset, seed, genre)
    target = Path(out_dir) if out_dir is not None else REPO_ROOT / "data" / dataset
    if dataset == "lastfm-sdpo":
        stats = prepare_release(raw_dir, target)
        LOGGER.info("wrote %s", target)
        return stats
    source = open_source(dataset, raw_dir, genre)
    prepared = build(dataset, source, seed, genre, max_users, max_items)
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
) -> None:
    """Command line entry point: prepare one dataset and print its statistics."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        stats = prepare(dataset, raw_dir, out_dir, seed, genre, max_users, max_items)
    except DataPreparationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(format_stats(stats))
    print(f"written to {Path(out_dir) if out_dir is not None else REPO_ROOT / 'data' / dataset}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
