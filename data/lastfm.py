"""LastFM (HetRec 2011 Last.fm 2K): a user's sequence is the artists in the order the user first tagged them.

Raw files: ``artists.dat`` (names) and ``user_taggedartists-timestamps.dat``, else ``user_taggedartists.dat``
(dates); see data/README.md, *LastFM*.
"""

from __future__ import annotations

from collections.abc import Iterator

from data.errors import DataPreparationError
from data.raw_files import RawData, RawSource, is_header_line, parse_int, read_lines, split_columns

DOWNLOAD_URLS = ("https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",)
#: Sub-folders of ``--raw_dir`` where the raw files are looked for.
RAW_SUBFOLDERS = ("lastfm-2k", "hetrec2011-lastfm-2k", "lastfm")

LASTFM_ARTISTS = "artists.dat"
LASTFM_TIMESTAMPS = "user_taggedartists-timestamps.dat"
LASTFM_DATES = "user_taggedartists.dat"
#: Raw files needed; each entry lists alternatives (the first present wins).
REQUIRED_FILES = [(LASTFM_ARTISTS,), (LASTFM_TIMESTAMPS, LASTFM_DATES)]


def read_lastfm(source: RawSource, genre: str = "") -> RawData:
    """Read HetRec 2011 Last.fm: artists and their first tagging time per user (``genre`` is unused)."""
    names = _read_artists(source)
    if source.has(LASTFM_TIMESTAMPS):
        events_file, rows = LASTFM_TIMESTAMPS, _timestamp_rows(source)
    else:
        events_file, rows = LASTFM_DATES, _date_rows(source)
    events, unknown = [], 0
    for user, artist, time in rows:
        if artist in names:
            events.append((user, artist, time))
        else:
            unknown += 1
    return RawData(events, names, [LASTFM_ARTISTS, events_file], {"tag_rows_with_unknown_artist": unknown})


def _read_artists(source: RawSource) -> dict[str, str]:
    where = source.where(LASTFM_ARTISTS)
    names: dict[str, str] = {}
    for lineno, text in read_lines(source, LASTFM_ARTISTS, "utf-8-or-latin-1"):
        if is_header_line(lineno, text, "id"):
            continue
        artist, name, _url, _picture = split_columns(text, "\t", 4, where, lineno)
        key = str(parse_int(artist, "id", where, lineno))
        if key in names:
            raise DataPreparationError(f"{where}:{lineno}: duplicate artist id {key}")
        names[key] = name
    return names


def _timestamp_rows(source: RawSource) -> Iterator[tuple[str, str, int]]:
    where = source.where(LASTFM_TIMESTAMPS)
    for lineno, text in read_lines(source, LASTFM_TIMESTAMPS, "utf-8-or-latin-1"):
        if is_header_line(lineno, text, "userID"):
            continue
        user, artist, tag, stamp = split_columns(text, "\t", 4, where, lineno)
        parse_int(tag, "tagID", where, lineno)
        yield (
            str(parse_int(user, "userID", where, lineno)),
            str(parse_int(artist, "artistID", where, lineno)),
            parse_int(stamp, "timestamp", where, lineno),
        )


def _date_rows(source: RawSource) -> Iterator[tuple[str, str, int]]:
    where = source.where(LASTFM_DATES)
    for lineno, text in read_lines(source, LASTFM_DATES, "utf-8-or-latin-1"):
        if is_header_line(lineno, text, "userID"):
            continue
        user, artist, tag, day, month, year = split_columns(text, "\t", 6, where, lineno)
        parse_int(tag, "tagID", where, lineno)
        d, m, y = (parse_int(v, c, where, lineno) for v, c in ((day, "day"), (month, "month"), (year, "year")))
        if not (1 <= d <= 31 and 1 <= m <= 12):
            raise DataPreparationError(f"{where}:{lineno}: invalid date day={d} month={m} year={y}")
        yield (
            str(parse_int(user, "userID", where, lineno)),
            str(parse_int(artist, "artistID", where, lineno)),
            y * 10_000 + m * 100 + d,
        )
