"""Where a dataset's raw files are read from: a local copy (``--raw_dir`` or ``$SDPO_RAW_DIR``: the folder holding
the files, its parent, the official zip or a folder holding it), else the official archive, downloaded once."""

from __future__ import annotations

import os
from pathlib import Path

from data import goodreads, lastfm, movielens
from data.download import DOWNLOAD_URLS, fetch
from data.errors import DataPreparationError
from data.raw_files import DirSource, RawSource, ZipSource

#: Sub-folders (of ``--raw_dir``) where the raw files of a dataset are looked for.
RAW_SUBFOLDERS = {
    "lastfm": lastfm.RAW_SUBFOLDERS,
    "movielens": movielens.RAW_SUBFOLDERS,
    "goodreads": goodreads.RAW_SUBFOLDERS,
}


def required_files(dataset: str, genre: str = goodreads.DEFAULT_GENRE) -> list[tuple[str, ...]]:
    """Raw files needed for ``dataset``; each entry lists alternatives (the first present wins)."""
    if dataset == "lastfm":
        return lastfm.REQUIRED_FILES
    if dataset == "movielens":
        return movielens.REQUIRED_FILES
    return goodreads.required_files(genre)


def _missing(source: RawSource, required: list[tuple[str, ...]]) -> list[str]:
    return [" or ".join(alts) for alts in required if not any(source.has(alt) for alt in alts)]


def _zip_sources(folder: Path, dataset: str, genre: str) -> list[Path]:
    names = [url.rsplit("/", 1)[1] for url in DOWNLOAD_URLS[dataset]]
    return [folder / name.format(genre=genre) for name in names if name.endswith(".zip")]


def resolve_source(dataset: str, raw_dir: str | os.PathLike[str], genre: str = goodreads.DEFAULT_GENRE) -> RawSource:
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


def open_source(
    dataset: str, raw_dir: str | os.PathLike[str] | None, genre: str = goodreads.DEFAULT_GENRE
) -> RawSource:
    """The raw files to use: ``raw_dir``, else ``$SDPO_RAW_DIR``, else the (downloaded) cache."""
    chosen = raw_dir if raw_dir is not None else os.environ.get("SDPO_RAW_DIR") or None
    if chosen is not None:
        return resolve_source(dataset, chosen, genre)
    paths = fetch(dataset, genre, required_files(dataset, genre))
    if len(paths) == 1 and paths[0].suffix == ".zip":
        return _checked(ZipSource(paths[0]), required_files(dataset, genre))
    return _checked(DirSource(paths[0].parent), required_files(dataset, genre))
