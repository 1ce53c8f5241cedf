"""Reading raw files: a folder or a zip archive as a source, line by line, with one-line errors."""

from __future__ import annotations

import gzip
import hashlib
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from data.errors import DataPreparationError

CHUNK_BYTES = 1 << 20


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


def member_basename(member: str) -> str:
    """Base name of a zip member path."""
    return member.rstrip("/").rsplit("/", 1)[-1]


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
            members.setdefault(member_basename(member), member)
        self.members = members

    def has(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        return self.archive.open(self.members[name])

    def where(self, name: str) -> str:
        return f"{self.path}:{self.members.get(name, name)}"


def raw_file_sha256(source: RawSource, name: str) -> str:
    """The sha256 of a raw file (recorded in stats.json)."""
    digest = hashlib.sha256()
    try:
        with source.open(name) as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataPreparationError(f"{source.where(name)}: cannot read, truncated or corrupt ({exc})") from None
    return digest.hexdigest()


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


def split_columns(text: str, sep: str, columns: int, where: str, lineno: int) -> list[str]:
    """The ``columns`` fields of a line; any other count is an error naming the file and line."""
    parts = text.split(sep)
    if len(parts) != columns:
        raise DataPreparationError(
            f"{where}:{lineno}: expected {columns} columns separated by {sep!r}, got {len(parts)}"
        )
    return parts


def parse_int(value: str, column: str, where: str, lineno: int) -> int:
    """An integer field; anything else is an error naming the file, line and column."""
    if value.isascii() and value.isdigit():
        return int(value)
    value = value.strip()
    if not re.fullmatch(r"-?\d+", value):
        raise DataPreparationError(f"{where}:{lineno}: column {column} is not an integer: {value[:40]!r}")
    return int(value)


def is_header_line(lineno: int, text: str, first_column: str) -> bool:
    """Whether line ``lineno`` is a header whose first column is ``first_column``."""
    return lineno == 1 and text.split("\t", 1)[0].strip().lower() == first_column.lower()
