"""Goodreads (UCSD Book Graph), one genre: every shelf addition is an interaction, ordered by ``date_added``.

Raw files: ``goodreads_interactions_<genre>.json.gz`` and ``goodreads_books_<genre>.json.gz``; see
data/README.md, *Goodreads*.
"""

from __future__ import annotations

import calendar
import json
import re
from collections import Counter
from typing import Any

from data.errors import DataPreparationError
from data.raw_files import RawData, RawSource, read_lines

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

#: ``{genre}`` is filled in.
DOWNLOAD_URLS = (
    "https://datarepo.eng.ucsd.edu/mcauley_group/gdrive/goodreads/byGenre/goodreads_interactions_{genre}.json.gz",
    "https://datarepo.eng.ucsd.edu/mcauley_group/gdrive/goodreads/byGenre/goodreads_books_{genre}.json.gz",
)
#: Sub-folders of ``--raw_dir`` where the raw files are looked for.
RAW_SUBFOLDERS = ("goodreads", "byGenre")


def interactions_file(genre: str) -> str:
    return f"goodreads_interactions_{genre}.json.gz"


def books_file(genre: str) -> str:
    return f"goodreads_books_{genre}.json.gz"


def required_files(genre: str) -> list[tuple[str, ...]]:
    """Raw files needed for one genre; each entry lists alternatives (here: none)."""
    return [(interactions_file(genre),), (books_file(genre),)]


def read_goodreads(source: RawSource, genre: str = DEFAULT_GENRE) -> RawData:
    """Read a UCSD Book Graph genre subset: shelf additions ordered by ``date_added``."""
    names = _read_books(source, books_file(genre))
    where = source.where(interactions_file(genre))
    events, dropped = [], Counter({"interactions_without_date": 0, "interactions_with_unknown_book": 0})
    for lineno, text in read_lines(source, interactions_file(genre)):
        record = _json_object(text, where, lineno)
        user, book, added = (_json_field(record, key, where, lineno) for key in ("user_id", "book_id", "date_added"))
        if not added.strip():
            dropped["interactions_without_date"] += 1
            continue
        if book not in names:
            dropped["interactions_with_unknown_book"] += 1
            continue
        events.append((user, book, goodreads_time(added, where, lineno)))
    return RawData(events, names, [interactions_file(genre), books_file(genre)], dict(dropped))


def _read_books(source: RawSource, name: str) -> dict[str, str]:
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


def goodreads_time(text: str, where: str, lineno: int) -> int:
    """Parse ``"Mon Aug 01 13:41:57 -0700 2011"`` to seconds since the epoch (UTC)."""
    match = _GOODREADS_DATE.fullmatch(text.strip())
    if not match or match[1] not in _MONTHS:
        raise DataPreparationError(f"{where}:{lineno}: unparseable date_added {text[:40]!r}")
    month, day, hour, minute, second = _MONTHS[match[1]], *(int(match[i]) for i in range(2, 6))
    offset = (int(match[7]) * 3600 + int(match[8]) * 60) * (-1 if match[6] == "-" else 1)
    return calendar.timegm((int(match[9]), month, day, hour, minute, second, 0, 0, 0)) - offset
