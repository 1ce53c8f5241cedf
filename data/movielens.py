"""MovieLens 100K: every rating is an interaction, ordered by its timestamp; titles cleaned.

Raw files: ``u.data`` (ratings) and ``u.item`` (titles); see data/README.md, *MovieLens 100K*.
"""

from __future__ import annotations

import re

from data.errors import DataPreparationError
from data.raw_files import RawData, RawSource, parse_int, read_lines, split_columns

DOWNLOAD_URLS = ("https://files.grouplens.org/datasets/movielens/ml-100k.zip",)
#: Sub-folders of ``--raw_dir`` where the raw files are looked for.
RAW_SUBFOLDERS = ("ml-100k", "movielens")

ML_RATINGS = "u.data"
ML_ITEMS = "u.item"
#: Raw files needed; each entry lists alternatives (the first present wins).
REQUIRED_FILES = [(ML_RATINGS,), (ML_ITEMS,)]


def read_movielens(source: RawSource, genre: str = "") -> RawData:
    """Read MovieLens 100K: ratings with their timestamps and cleaned movie titles (``genre`` is unused)."""
    names = _read_items(source)
    where = source.where(ML_RATINGS)
    events = []
    for lineno, text in read_lines(source, ML_RATINGS, "latin-1"):
        user, item, rating, stamp = split_columns(text, "\t", 4, where, lineno)
        user_id, item_id = parse_int(user, "user id", where, lineno), parse_int(item, "item id", where, lineno)
        parse_int(rating, "rating", where, lineno)
        if str(item_id) not in names:
            raise DataPreparationError(f"{where}:{lineno}: unknown item id {item_id} (not in {ML_ITEMS})")
        events.append((str(user_id), str(item_id), parse_int(stamp, "timestamp", where, lineno)))
    return RawData(events, names, [ML_RATINGS, ML_ITEMS])


def _read_items(source: RawSource) -> dict[str, str]:
    where = source.where(ML_ITEMS)
    names: dict[str, str] = {}
    for lineno, text in read_lines(source, ML_ITEMS, "latin-1"):
        parts = split_columns(text, "|", 24, where, lineno)
        key = str(parse_int(parts[0], "movie id", where, lineno))
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
