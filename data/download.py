"""Download and cache: the official raw archives are fetched once, through pooch, into ``$SDPO_CACHE_DIR/raw/``
(default ``~/.cache/sdpo/raw/``) and kept only when they verify.

A download goes to ``<name>.part`` and is renamed into place after its checks: the sha256 where it is known
(pooch's ``known_hash``), and the archive's integrity (a zip opens, holds the needed files and passes its CRC
checks; a gzip file decompresses to its end). Any failure is one line saying how to work offline; nothing
partial is left in the cache. ``SDPO_DOWNLOAD_BASE`` replaces the download location (a local test server).
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import re
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from data import goodreads, lastfm, movielens
from data.errors import DataPreparationError
from data.raw_files import CHUNK_BYTES, member_basename

LOGGER = logging.getLogger("sdpo.data.download")

#: Official download locations, by dataset (Goodreads: ``{genre}`` is filled in).
DOWNLOAD_URLS: dict[str, tuple[str, ...]] = {
    "movielens": movielens.DOWNLOAD_URLS,
    "lastfm": lastfm.DOWNLOAD_URLS,
    "goodreads": goodreads.DOWNLOAD_URLS,
}

#: Expected (size in bytes, sha256) of each downloaded file; ``None`` = unknown, in
#: which case only the archive's integrity (zip CRCs / gzip stream) and members are checked.
EXPECTED_CHECKSUMS: dict[str, tuple[int | None, str | None]] = {
    "ml-100k.zip": (None, None),
    "hetrec2011-lastfm-2k.zip": (None, None),
}

DOWNLOAD_TIMEOUT_S = 60


def cache_dir() -> Path:
    """Folder where downloaded archives are kept: ``$SDPO_CACHE_DIR/raw`` (default ``~/.cache/sdpo/raw``).

    ``SDPO_CACHE_DIR`` is the project-wide cache root (built models live there too).
    """
    root = os.environ.get("SDPO_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "sdpo") / "raw"


def download_urls(dataset: str, genre: str = goodreads.DEFAULT_GENRE) -> list[str]:
    """URLs to fetch for ``dataset``, honouring the ``SDPO_DOWNLOAD_BASE`` override."""
    urls = [url.format(genre=genre) for url in DOWNLOAD_URLS[dataset]]
    base = os.environ.get("SDPO_DOWNLOAD_BASE")
    if base:
        urls = [f"{base.rstrip('/')}/{url.rsplit('/', 1)[1]}" for url in urls]
    return urls


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


def _connection_problem(exc: Exception) -> str:
    """The short reason of a failed connection (``[Errno 111] Connection refused``), not urllib3's nested repr."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\][^'\")]*|IncompleteRead\([^)]*\)", text)
    if match:
        return match[0].strip()
    return type(exc).__name__ if len(text) > 200 else text


def download_file(url: str, target: Path, hint: str, check: Callable[[Path], None] | None = None,
                  sha256: str | None = None) -> None:
    """Download ``url`` to ``target`` through pooch, via ``<target>.part``; kept only when ``check(part)``
    passes (and the sha256 matches, when given). A progress bar is shown on a terminal only."""
    import pooch  # with requests: imported only for a download (a --raw_dir run does without them)
    import requests

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataPreparationError(f"cannot create cache folder {target.parent} ({exc}); set SDPO_CACHE_DIR") from None
    part = target.with_name(target.name + ".part")
    part.unlink(missing_ok=True)  # left by a killed run
    LOGGER.info("downloading %s -> %s", url, target)
    downloader = pooch.HTTPDownloader(progressbar=sys.stderr.isatty(), timeout=DOWNLOAD_TIMEOUT_S)
    pooch_logger = pooch.get_logger()
    level = pooch_logger.level
    pooch_logger.setLevel(logging.WARNING)  # we log the download ourselves, without pooch's hash advice
    try:
        try:
            pooch.retrieve(url, known_hash=f"sha256:{sha256}" if sha256 else None, fname=part.name,
                           path=part.parent, downloader=downloader)
        except requests.HTTPError as exc:
            response = exc.response
            status = f"HTTP {response.status_code} {response.reason}" if response is not None else str(exc)
            raise DataPreparationError(f"cannot download {url}: {status}; {hint}") from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            raise DataPreparationError(
                f"download of {url} was truncated ({_connection_problem(exc)}); retry, or {hint}"
            ) from None
        except requests.RequestException as exc:
            raise DataPreparationError(f"cannot download {url} ({_connection_problem(exc)}); {hint}") from None
        except ValueError as exc:  # pooch: the sha256 does not match known_hash
            raise DataPreparationError(f"{url}: sha256 mismatch (corrupt download; {exc}); retry, or {hint}") from None
        except OSError as exc:
            raise DataPreparationError(f"cannot download {url} to {part} ({exc}); {hint}") from None
        if check is not None:
            check(part)
        os.replace(part, target)
    finally:
        pooch_logger.setLevel(level)
        part.unlink(missing_ok=True)


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


def _sha256_of(path: Path) -> str:
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def _verify_zip(path: Path, required: list[tuple[str, ...]], advice: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            basenames = {member_basename(member) for member in archive.namelist()}
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


def fetch(dataset: str, genre: str, required: list[tuple[str, ...]]) -> list[Path]:
    """Return the cached official archive(s) of ``dataset``, downloading them if needed.

    ``required`` lists the raw files a zip archive must hold (alternatives per entry).
    """
    folder = cache_dir()
    hint = offline_hint(dataset, genre)
    paths = []
    for url in download_urls(dataset, genre):
        name = url.rsplit("/", 1)[1]
        needed = required if name.endswith(".zip") else []
        target = folder / name
        if target.exists():
            verify_archive(target, name, needed, f"delete {target} and re-run")
        else:
            check = functools.partial(verify_archive, name=name, required=needed, advice=f"retry, or {hint}")
            download_file(url, target, hint, check, sha256=EXPECTED_CHECKSUMS.get(name, (None, None))[1])
        paths.append(target)
    return paths
