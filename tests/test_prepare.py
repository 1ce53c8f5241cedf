"""Tests for the data package (python -m data.prepare): real LastFM / MovieLens files (when shared/ is there),
small fixtures in the raw formats, downloads from a local HTTP server, bad input."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import random
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from data import download, goodreads, lastfm, lastfm_sdpo, locate_raw_files, movielens, prepare, protocol
from data.errors import DataPreparationError

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RAW = SHARED / "data" / "raw"
SCRIPT = ROOT / "data" / "prepare.py"  # the old command, `python data/prepare.py`, still works

Error = DataPreparationError


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the user's environment, cache or the network."""
    for name in ("SDPO_RAW_DIR", "SDPO_DOWNLOAD_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SDPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SDPO_DOWNLOAD_BASE", "http://127.0.0.1:9")  # discard port: never the internet


# ---------------------------------------------------------------------------
# Fixture writers (raw formats)
# ---------------------------------------------------------------------------

N_USERS, N_ITEMS, PER_USER = 12, 40, 20


def _user_items(user: int) -> list[int]:
    """Items (1-based) of a fixture user: 20 consecutive ids, rotated per user."""
    return [(user * 7 + j) % N_ITEMS + 1 for j in range(PER_USER)]


def _movie_title(item: int) -> str:
    if item == 5:
        return "Usual Suspects, The (1995)"
    if item in (6, 7):
        return "Twin Movie (1997)"
    if item == 8:
        return "Caf\u00e9 Society (1990)"
    return f"Movie {item} (199{item % 10})"


def write_movielens(folder: Path) -> Path:
    """A small MovieLens 100K look-alike (u.item in latin-1, u.data tab-separated)."""
    folder.mkdir(parents=True, exist_ok=True)
    genres = "|".join(["0"] * 19)
    items = "".join(
        f"{i}|{_movie_title(i)}|01-Jan-1995||http://example.org/{i}|{genres}\n" for i in range(1, N_ITEMS + 1)
    )
    (folder / "u.item").write_bytes(items.encode("latin-1"))
    rows = []
    for user in range(1, N_USERS + 1):
        for rank, item in enumerate(_user_items(user)):
            # reverse file order within a user: time order must come from the timestamp
            rows.append((user, item, 3, 880_000_000 + user * 10_000 + (PER_USER - rank) * 10))
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    return folder


def write_lastfm(folder: Path, with_timestamps: bool = True) -> Path:
    """A small HetRec Last.fm look-alike; the dates file contradicts the timestamps."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {i: f"Artist {i}" for i in range(1, N_ITEMS + 1)}
    names[3], names[4], names[9], names[10] = "Foo::Bar", "Same Name", "Same Name", "  "
    artists = "id\tname\turl\tpictureURL\n" + "".join(
        f"{i}\t{n}\thttp://x/{i}\thttp://y/{i}\n" for i, n in names.items()
    )
    (folder / "artists.dat").write_bytes(artists.encode("utf-8") + "41\tMot\u00f6rhead\tu\tp\n".encode("latin-1"))
    stamps, dates = ["userID\tartistID\ttagID\ttimestamp\n"], ["userID\tartistID\ttagID\tday\tmonth\tyear\n"]
    for user in range(1, N_USERS + 1):
        for rank, item in enumerate(_user_items(user)):
            stamp = 1_200_000_000_000 + user * 10**9 + (PER_USER - rank) * 86_400_000
            for tag, extra in ((7, 5 * 86_400_000), (8, 0)):  # a later tag first: the earliest one counts
                stamps.append(f"{user}\t{item}\t{tag}\t{stamp + extra}\n")
            dates.append(f"{user}\t{item}\t7\t{1 + rank}\t1\t2009\n")
        stamps.append(f"{user}\t999\t1\t1\n")  # unknown artist: dropped and counted
    if with_timestamps:
        (folder / "user_taggedartists-timestamps.dat").write_text("".join(stamps))
    (folder / "user_taggedartists.dat").write_text("".join(dates))
    return folder


GOODREADS_BOOKS = {
    1: "Harry Potter and the Sorcerer's Stone (Harry Potter, #1)",
    2: "Poems::Selected",
    3: "Collected Poems",
    4: "Collected Poems",
    5: "Leaves of Grass (Deathbed Edition)",
}


def _goodreads_date(user: int, rank: int) -> str:
    """Two shelvings a day whose local-time order is the reverse of their UTC order."""
    clock = "09:41:57 +0500" if rank % 2 == 0 else "08:41:57 -0700"
    return f"Mon Aug {1 + rank // 2:02d} {clock} 20{10 + user % 5}"


def write_goodreads(folder: Path, genre: str = "poetry") -> Path:
    """A small UCSD Book Graph genre subset (gzip JSON lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    books = [
        {
            "book_id": str(i),
            "title": GOODREADS_BOOKS.get(i, f"Book {i} (Series {i}, #{i})"),
            "title_without_series": "x",
        }
        for i in range(1, N_ITEMS + 1)
    ]
    interactions = []
    for user in range(1, N_USERS + 1):
        user_id = f"{user:032x}"
        for rank, item in enumerate(_user_items(user)):
            interactions.append(
                {
                    "user_id": user_id,
                    "book_id": str(item),
                    "review_id": "r",
                    "is_read": True,
                    "rating": 4,
                    "date_added": _goodreads_date(user, rank),
                    "date_updated": "",
                    "read_at": "",
                    "started_at": "",
                }
            )
        interactions.append({"user_id": user_id, "book_id": "5", "date_added": ""})  # no date: skipped
        interactions.append({"user_id": user_id, "book_id": "777", "date_added": _goodreads_date(user, 0)})
    for name, rows in (
        (f"goodreads_books_{genre}.json.gz", books),
        (f"goodreads_interactions_{genre}.json.gz", interactions),
    ):
        with gzip.open(folder / name, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    return folder


def movielens_zip(path: Path, source: Path) -> Path:
    """Zip a MovieLens fixture the way the official archive is laid out (ml-100k/ folder)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("u.data", "u.item"):
            archive.write(source / name, f"ml-100k/{name}")
    return path


def read_records(folder: Path, split: str) -> list[dict]:
    return json.loads((folder / f"{split}.json").read_text(encoding="utf-8"))


def check_records(folder: Path, n_items: int) -> int:
    """Every record is well formed; returns the number of records."""
    names = [line.split("::", 1)[1] for line in (folder / "id2name.txt").read_text(encoding="utf-8").splitlines()]
    assert len(names) == n_items == len(set(names))
    assert all(name and name == name.strip(": ") and "::" not in name for name in names)
    known = set(names)
    total = 0
    for split in protocol.SPLITS:
        for record in read_records(folder, split):
            assert list(record) == ["historyList", "itemList", "trueSelection"]
            history = record["historyList"].split("::")
            candidates = record["itemList"]
            assert 3 <= len(history) <= 10 and len(set(history)) == len(history)
            assert len(candidates) == 20 and len(set(candidates)) == 20
            assert record["trueSelection"] in candidates
            assert not set(history) & set(candidates)
            assert known.issuperset(history) and known.issuperset(candidates)
            total += 1
    return total


def check_splits(prepared) -> None:
    """Users are in one split only; no val/test user ends before a train user."""
    splits = prepared.split_users
    sets = {name: set(users) for name, users in splits.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    last = prepared.last_time
    assert max(last[u] for u in splits["train"]) <= min(last[u] for u in splits["val"])
    assert max(last[u] for u in splits["val"]) <= min(last[u] for u in splits["test"])
    assert max(last[u] for u in splits["train"]) <= min(last[u] for u in splits["test"])


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------------
# Real data (shared/, read-only)
# ---------------------------------------------------------------------------

REAL = {"lastfm": "lastfm-2k", "movielens": "ml-100k"}

EXPECTED_REAL = {
    "lastfm": {
        "users": 1219,
        "items": 4560,
        "interactions": 56657,
        "samples": 53000,
        "mean_history_length": 9.4462,
        "splits": {"train": (975, 31601), "val": (121, 7337), "test": (123, 14062)},
    },
    "movielens": {
        "users": 943,
        "items": 1682,
        "interactions": 100000,
        "samples": 97171,
        "mean_history_length": 9.7283,
        "splits": {"train": (754, 70574), "val": (94, 9145), "test": (95, 17452)},
    },
}


@pytest.fixture(scope="module", params=sorted(REAL))
def real(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Build a real dataset once per module and write it to a temporary folder."""
    dataset = request.param
    folder = RAW / REAL[dataset]
    if not folder.is_dir():
        pytest.skip(f"shared raw data not found at {folder} (read-only copy of the official archive)")
    prepared = prepare.build(dataset, locate_raw_files.resolve_source(dataset, folder))
    out = tmp_path_factory.mktemp(dataset)
    prepare.write_outputs(prepared.files, out)
    return dataset, prepared, out


def test_real_counts_are_stable(real) -> None:
    dataset, prepared, _ = real
    stats, expected = prepared.stats, EXPECTED_REAL[dataset]
    for key in ("users", "items", "interactions", "samples", "mean_history_length"):
        assert stats[key] == expected[key], key
    assert {s: (v["users"], v["samples"]) for s, v in stats["splits"].items()} == expected["splits"]
    assert stats["domain"] == prepare.DOMAINS[dataset]


def test_real_records_are_valid(real) -> None:
    _, prepared, out = real
    assert check_records(out, prepared.stats["items"]) == prepared.stats["samples"]


def test_real_splits_are_disjoint_and_time_ordered(real) -> None:
    check_splits(real[1])


def test_real_rerun_is_byte_identical(real, tmp_path: Path) -> None:
    dataset, _, out = real
    # also exercises the lenient --raw_dir: the parent of the dataset's folder
    prepare.prepare(dataset, raw_dir=RAW, out_dir=tmp_path / "again")
    assert folder_bytes(tmp_path / "again") == folder_bytes(out)


# ---------------------------------------------------------------------------
# Fixtures in the raw formats
# ---------------------------------------------------------------------------


def test_movielens_fixture(tmp_path: Path) -> None:
    raw = write_movielens(tmp_path / "raw" / "ml-100k")
    stats = prepare.prepare("movielens", raw_dir=tmp_path / "raw", out_dir=tmp_path / "out")
    assert (stats["users"], stats["items"], stats["interactions"]) == (12, 40, 240)
    assert stats["samples"] == 12 * (PER_USER - 3) == check_records(tmp_path / "out", 40)
    names = (tmp_path / "out" / "id2name.txt").read_text(encoding="utf-8").splitlines()
    assert names[4] == "4::The Usual Suspects" and names[5] == "5::Twin Movie" and names[6] == "6::Twin Movie (2)"
    assert names[7] == "7::Caf\u00e9 Society"
    # the history follows the timestamps (file order is reversed per user)
    source = locate_raw_files.resolve_source("movielens", raw)
    sequences = protocol.build_sequences(movielens.read_movielens(source).events)
    assert [item for item, _ in sequences["1"]] == [str(i) for i in reversed(_user_items(1))]


def test_seed_changes_candidates_only(tmp_path: Path) -> None:
    raw = write_movielens(tmp_path / "ml")
    prepare.prepare("movielens", raw_dir=raw, out_dir=tmp_path / "s0")
    prepare.prepare("movielens", raw_dir=raw, out_dir=tmp_path / "s1", seed=1)
    a, b = read_records(tmp_path / "s0", "train"), read_records(tmp_path / "s1", "train")
    assert [r["historyList"] for r in a] == [r["historyList"] for r in b]
    assert [r["trueSelection"] for r in a] == [r["trueSelection"] for r in b]
    assert [r["itemList"] for r in a] != [r["itemList"] for r in b]


def test_per_sample_candidates_are_the_default_and_original_keeps_everything_but_the_negatives(tmp_path: Path) -> None:
    raw = write_movielens(tmp_path / "ml")
    original = prepare.prepare("movielens", raw_dir=raw, out_dir=tmp_path / "orig", candidates="original")
    stats = prepare.prepare("movielens", raw_dir=raw, out_dir=tmp_path / "ps")
    a, b = read_records(tmp_path / "orig", "train"), read_records(tmp_path / "ps", "train")
    assert [(r["historyList"], r["trueSelection"]) for r in a] == [(r["historyList"], r["trueSelection"]) for r in b]
    assert [r["itemList"] for r in a] != [r["itemList"] for r in b]
    assert stats["samples"] == check_records(tmp_path / "ps", 40)  # 20 distinct candidates, target in, history out
    assert stats["protocol"]["candidate_protocol"] == "per_sample" and "user_id" in stats["protocol"]["candidate_rng"]
    assert original["protocol"]["candidate_protocol"] == "original"
    assert "target_id" in original["protocol"]["candidate_rng"]
    again = prepare.prepare("movielens", raw_dir=raw, out_dir=tmp_path / "ps2", candidates="per_sample")
    assert again == stats and read_records(tmp_path / "ps2", "train") == b  # deterministic, same as the default
    with pytest.raises(prepare.DataPreparationError, match="--candidates 'random'"):
        prepare.prepare("movielens", raw_dir=raw, out_dir=tmp_path / "bad", candidates="random")
    assert not (tmp_path / "bad").exists()


def test_the_default_folder_says_which_candidates_it_holds() -> None:
    assert prepare.default_out_dir("lastfm") == prepare.REPO_ROOT / "data" / "lastfm"
    assert prepare.default_out_dir("lastfm", "per_sample") == prepare.REPO_ROOT / "data" / "lastfm"
    assert prepare.default_out_dir("movielens", "original") == prepare.REPO_ROOT / "data" / "movielens-original"


def test_prepare_writes_the_folder_its_candidates_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    raw = write_movielens(tmp_path / "ml")
    monkeypatch.setattr(prepare, "REPO_ROOT", tmp_path / "repo")
    prepare.main("movielens", raw_dir=str(raw), candidates="original")
    prepare.main("movielens", raw_dir=str(raw))
    written = [line for line in capsys.readouterr().out.splitlines() if line.startswith("written to")]
    assert written == [f"written to {tmp_path / 'repo' / 'data' / 'movielens-original'}",
                       f"written to {tmp_path / 'repo' / 'data' / 'movielens'}"]
    original = json.loads((tmp_path / "repo" / "data" / "movielens-original" / "stats.json").read_text())
    default = json.loads((tmp_path / "repo" / "data" / "movielens" / "stats.json").read_text())
    assert original["protocol"]["candidate_protocol"] == "original"
    assert default["protocol"]["candidate_protocol"] == "per_sample"


@pytest.mark.parametrize("candidates", ["per_sample", "original"])
def test_each_sample_takes_the_newest_items_before_its_target_oldest_first(candidates: str) -> None:
    """A user's 15 items give 12 samples; a sample at position p has the up to 10 items just before p, oldest
    first (not the user's first 10), and 20 candidates: the target and 19 items outside the history."""
    sequence = list(range(100, 115))
    samples = protocol.make_samples(sequence, 300, 0, candidates, user="u")
    assert [target for _, _, target in samples] == sequence[3:]
    for position, (history, candidate_ids, target) in zip(range(3, 15), samples):
        assert history == sequence[max(0, position - 10):position] and target == sequence[position]
        assert len(candidate_ids) == 20 and target in candidate_ids and not set(history) & (set(candidate_ids) - {target})
    assert samples[-1][0] == list(range(104, 114))


def test_original_candidates_are_the_original_codes_draw() -> None:
    """--candidates original: `random.seed(target)`, `random.sample` over the sorted ids outside the history and
    the target (the original code), then a shuffle from the same generator."""
    n_items, seed = 300, 0
    for history, target in (([5, 9, 17], 42), ([0, 1, 2, 3, 299], 150), ([120, 7, 64], 0)):
        [(got_history, candidates, got_target)] = protocol.make_samples([*history, target], n_items, seed,
                                                                         "original")[-1:]
        assert got_history == history and got_target == target
        reference = random.Random()
        reference.seed(target)
        allowed = sorted(set(range(n_items)) - {*history, target})
        expected = [*reference.sample(allowed, 19), target]
        reference.shuffle(expected)
        assert candidates == expected


def test_candidates_for_the_release_split_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        prepare.main("lastfm-sdpo", raw_dir=str(tmp_path), out_dir=str(tmp_path / "out"), candidates="per_sample")
    assert stop.value.code == 1
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "does not apply to lastfm-sdpo" in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(prepare.DataPreparationError, match="'original' does not apply to lastfm-sdpo"):
        prepare.prepare("lastfm-sdpo", raw_dir=tmp_path, out_dir=tmp_path / "out", candidates="original")
    assert not (tmp_path / "out").exists()


def test_lastfm_timestamps_file_is_preferred(tmp_path: Path) -> None:
    raw = write_lastfm(tmp_path / "lastfm")
    data = lastfm.read_lastfm(locate_raw_files.resolve_source("lastfm", raw))
    assert data.files == ["artists.dat", "user_taggedartists-timestamps.dat"]
    assert data.dropped == {"tag_rows_with_unknown_artist": N_USERS}
    assert data.names["41"] == "Mot\u00f6rhead"  # latin-1 line among utf-8 ones
    sequences = protocol.build_sequences(data.events)
    assert [item for item, _ in sequences["2"]] == [str(i) for i in reversed(_user_items(2))]
    prepared = prepare.build("lastfm", locate_raw_files.resolve_source("lastfm", raw))
    assert prepared.stats["items"] == 40 and prepared.stats["users"] == 12
    check_splits(prepared)
    assert "Foo:Bar" in prepared.names and "Same Name (2)" in prepared.names and "Item 10" in prepared.names


def test_lastfm_dates_fallback(tmp_path: Path) -> None:
    raw = write_lastfm(tmp_path / "lastfm", with_timestamps=False)
    data = lastfm.read_lastfm(locate_raw_files.resolve_source("lastfm", raw))
    assert data.files == ["artists.dat", "user_taggedartists.dat"]
    sequences = protocol.build_sequences(data.events)
    assert [item for item, _ in sequences["2"]] == [str(i) for i in _user_items(2)]
    stats = prepare.prepare("lastfm", raw_dir=raw, out_dir=tmp_path / "out")
    assert stats["samples"] == check_records(tmp_path / "out", stats["items"])


def test_goodreads_fixture(tmp_path: Path) -> None:
    raw = write_goodreads(tmp_path / "goodreads")
    data = goodreads.read_goodreads(locate_raw_files.resolve_source("goodreads", tmp_path), "poetry")
    assert data.dropped == {"interactions_without_date": N_USERS, "interactions_with_unknown_book": N_USERS}
    sequences = protocol.build_sequences(data.events)
    user = f"{3:032x}"
    # UTC order, not local-time order
    assert [item for item, _ in sequences[user]] == [str(i) for i in _user_items(3)]
    stats = prepare.prepare("goodreads", raw_dir=raw, out_dir=tmp_path / "out")
    assert stats["domain"] == "books" and stats["genre"] == "poetry"
    assert (stats["users"], stats["items"]) == (12, 40)
    assert stats["samples"] == check_records(tmp_path / "out", 40)
    names = dict(line.split("::", 1) for line in (tmp_path / "out" / "id2name.txt").read_text("utf-8").splitlines())
    assert names["0"] == "Harry Potter and the Sorcerer's Stone"
    assert names["1"] == "Poems:Selected" and names["2"] == "Collected Poems" and names["3"] == "Collected Poems (2)"
    assert names["4"] == "Leaves of Grass (Deathbed Edition)" and names["5"] == "Book 6"


def test_goodreads_caps(tmp_path: Path) -> None:
    raw = write_goodreads(tmp_path / "goodreads")
    sequences = protocol.build_sequences(goodreads.read_goodreads(locate_raw_files.resolve_source("goodreads", raw)).events)
    capped = protocol.cap_items(sequences, 30)
    assert len({i for seq in capped.values() for i, _ in seq}) == 30
    assert len(protocol.cap_users(sequences, 5, 4)) == 5
    assert protocol.cap_users(sequences, 5, 4) == protocol.cap_users(sequences, 5, 4)


# ---------------------------------------------------------------------------
# Names and dates
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Usual Suspects, The (1995)", "The Usual Suspects"),
        ("Shawshank Redemption, The (1994)", "The Shawshank Redemption"),
        ("Very Brady Sequel, A (1996)", "A Very Brady Sequel"),
        ("Big Blue, The (Grand bleu, Le) (1988)", "The Big Blue (Grand bleu, Le)"),
        (
            "Land Before Time III: The Time of the Great Giving (1995) (V)",
            "Land Before Time III: The Time of the Great Giving",
        ),
        ("Toy Story (1995)", "Toy Story"),
        ("unknown", "unknown"),
    ],
)
def test_movielens_title(raw: str, expected: str) -> None:
    assert movielens.movielens_title(raw) == expected


def test_names_helpers() -> None:
    assert (
        goodreads.goodreads_title("Harry Potter and the Sorcerer's Stone (Harry Potter, #1)")
        == "Harry Potter and the Sorcerer's Stone"
    )
    assert goodreads.goodreads_title("Odes (Penguin Classics)") == "Odes (Penguin Classics)"
    assert protocol.clean_name("  a:::b  c ", "1") == "a:b c" and protocol.clean_name(" ", "7") == "Item 7"
    assert protocol.clean_name(":wumpscut:", "1") == "wumpscut" and protocol.clean_name(" : :: ", "2") == "Item 2"
    assert protocol.unique_names(["A", "A", "A (2)", "B", "A"]) == ["A", "A (3)", "A (2)", "B", "A (4)"]
    assert goodreads.goodreads_time("Mon Aug 01 13:41:57 -0700 2011", "f", 1) == 1312231317


# ---------------------------------------------------------------------------
# Downloads from a local server
# ---------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _ShortReadHandler(http.server.BaseHTTPRequestHandler):
    """Announces 100000 bytes and sends 10."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"PK\x03\x04short!")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(directory: Path, handler: type = _QuietHandler) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (free port) serving ``directory`` from a thread."""
    factory = functools.partial(handler, directory=str(directory)) if handler is _QuietHandler else handler
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_download_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    www = tmp_path / "www"
    www.mkdir()
    movielens_zip(www / "ml-100k.zip", write_movielens(tmp_path / "fixture"))
    with serve(www) as base:
        monkeypatch.setenv("SDPO_DOWNLOAD_BASE", base)
        first = prepare.prepare("movielens", out_dir=tmp_path / "out1")
    cached = tmp_path / "cache" / "raw" / "ml-100k.zip"
    assert cached.read_bytes() == (www / "ml-100k.zip").read_bytes()
    assert sorted(p.name for p in cached.parent.iterdir()) == ["ml-100k.zip"]
    # the server is gone: the second run uses the cache
    second = prepare.prepare("movielens", out_dir=tmp_path / "out2")
    assert first == second and folder_bytes(tmp_path / "out1") == folder_bytes(tmp_path / "out2")
    monkeypatch.setitem(download.EXPECTED_CHECKSUMS, "ml-100k.zip", (cached.stat().st_size, "0" * 64))
    with pytest.raises(Error, match="sha256 mismatch"):
        prepare.prepare("movielens", out_dir=tmp_path / "out3")
    assert not (tmp_path / "out3").exists()


def test_download_is_hash_checked_when_the_sha256_is_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    www = tmp_path / "www"
    www.mkdir()
    archive = movielens_zip(www / "ml-100k.zip", write_movielens(tmp_path / "fixture")).read_bytes()
    cache = tmp_path / "cache" / "raw"
    with serve(www) as base:
        monkeypatch.setenv("SDPO_DOWNLOAD_BASE", base)
        monkeypatch.setitem(download.EXPECTED_CHECKSUMS, "ml-100k.zip", (None, "0" * 64))
        with pytest.raises(Error, match="sha256 mismatch") as info:
            prepare.prepare("movielens", out_dir=tmp_path / "bad")
        assert "\n" not in str(info.value) and "--raw_dir" in str(info.value)
        assert not (tmp_path / "bad").exists() and not list(cache.iterdir())  # nothing kept
        monkeypatch.setitem(download.EXPECTED_CHECKSUMS, "ml-100k.zip", (None, hashlib.sha256(archive).hexdigest()))
        prepare.prepare("movielens", out_dir=tmp_path / "good")
        assert (cache / "ml-100k.zip").read_bytes() == archive
        (www / "ml-100k.zip").unlink()
        (cache / "ml-100k.zip").unlink()
        with pytest.raises(Error, match="cannot download .*/ml-100k.zip: HTTP 404") as info:
            prepare.prepare("movielens", out_dir=tmp_path / "missing")
        assert "\n" not in str(info.value) and "--raw_dir" in str(info.value)
    assert not list(cache.iterdir())


def test_download_truncated_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    www = tmp_path / "www"
    www.mkdir()
    full = movielens_zip(tmp_path / "full.zip", write_movielens(tmp_path / "fixture")).read_bytes()
    (www / "ml-100k.zip").write_bytes(full[: len(full) // 2])
    with serve(www) as base:
        monkeypatch.setenv("SDPO_DOWNLOAD_BASE", base)
        with pytest.raises(Error, match="truncated or corrupt") as info:
            prepare.prepare("movielens", out_dir=tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "cache" / "raw").iterdir())  # no partial file left behind


def test_download_short_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(tmp_path, _ShortReadHandler) as base:
        monkeypatch.setenv("SDPO_DOWNLOAD_BASE", base)
        with pytest.raises(Error, match="truncated"):
            prepare.prepare("lastfm", out_dir=tmp_path / "out")
    assert not list((tmp_path / "cache" / "raw").iterdir())


def test_offline_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("SDPO_DOWNLOAD_BASE", f"http://127.0.0.1:{port}")
    with pytest.raises(Error) as info:
        prepare.prepare("lastfm", out_dir=tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and "hetrec2011-lastfm-2k.zip" in message
    assert "--raw_dir" in message and "SDPO_RAW_DIR" in message and "--dataset synthetic" in message


def test_raw_dir_env_and_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = movielens_zip(tmp_path / "ml-100k.zip", write_movielens(tmp_path / "fixture"))
    monkeypatch.setenv("SDPO_RAW_DIR", str(tmp_path))  # folder holding the official zip
    stats = prepare.prepare("movielens", out_dir=tmp_path / "a")
    assert stats == prepare.prepare("movielens", raw_dir=archive, out_dir=tmp_path / "b")  # the zip itself
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")


# ---------------------------------------------------------------------------
# Bad input: one line naming file and line, output folder untouched
# ---------------------------------------------------------------------------


def _replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = text.encode("latin-1")
    path.write_bytes(b"\n".join(lines))


def _assert_fails_cleanly(dataset: str, raw: Path, out: Path, *fragments: str) -> None:
    out.mkdir(exist_ok=True)
    (out / "train.json").write_text("old content")
    with pytest.raises(Error) as info:
        prepare.prepare(dataset, raw_dir=raw, out_dir=out)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert [p.name for p in out.iterdir()] == ["train.json"]
    assert (out / "train.json").read_text() == "old content"


def test_missing_file(tmp_path: Path) -> None:
    raw = write_movielens(tmp_path / "ml")
    (raw / "u.item").unlink()
    _assert_fails_cleanly("movielens", raw, tmp_path / "out", "u.item", "missing")


def test_nothing_found(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _assert_fails_cleanly("movielens", tmp_path / "empty", tmp_path / "out", "no movielens raw files", "u.data")


@pytest.mark.parametrize(
    ("lineno", "line", "fragment"),
    [
        (5, "1\t2\t3", "expected 4 columns"),
        (7, "abc\t2\t3\t880000000", "not an integer"),
        (9, "1\t999\t3\t880000000", "unknown item id 999"),
    ],
)
def test_bad_ratings_line(tmp_path: Path, lineno: int, line: str, fragment: str) -> None:
    raw = write_movielens(tmp_path / "ml")
    _replace_line(raw / "u.data", lineno, line)
    _assert_fails_cleanly("movielens", raw, tmp_path / "out", f"u.data:{lineno}:", fragment)


def test_bad_items_line(tmp_path: Path) -> None:
    raw = write_movielens(tmp_path / "ml")
    _replace_line(raw / "u.item", 3, "3|Only Two Columns")
    _assert_fails_cleanly("movielens", raw, tmp_path / "out", "u.item:3:", "expected 24 columns")


def test_bad_lastfm_lines(tmp_path: Path) -> None:
    raw = write_lastfm(tmp_path / "lastfm")
    _replace_line(raw / "artists.dat", 3, "2\tno url")
    _assert_fails_cleanly("lastfm", raw, tmp_path / "out", "artists.dat:3:", "expected 4 columns")
    raw = write_lastfm(tmp_path / "lastfm2")
    _replace_line(raw / "user_taggedartists-timestamps.dat", 6, "1\tx\t7\t1")
    _assert_fails_cleanly("lastfm", raw, tmp_path / "out", "user_taggedartists-timestamps.dat:6:", "artistID")


def test_bad_goodreads_lines(tmp_path: Path) -> None:
    raw = write_goodreads(tmp_path / "gr")
    interactions = raw / "goodreads_interactions_poetry.json.gz"
    lines = gzip.decompress(interactions.read_bytes()).split(b"\n")
    lines[3] = b'{"user_id": "u", "book_id": "1"'
    interactions.write_bytes(gzip.compress(b"\n".join(lines)))
    _assert_fails_cleanly(
        "goodreads", raw, tmp_path / "out", "goodreads_interactions_poetry.json.gz:4:", "invalid JSON"
    )
    lines[3] = b'{"user_id": "u", "book_id": "1", "date_added": "yesterday"}'
    interactions.write_bytes(gzip.compress(b"\n".join(lines)))
    _assert_fails_cleanly("goodreads", raw, tmp_path / "out", ":4:", "unparseable date_added")


def test_truncated_gzip_and_zip(tmp_path: Path) -> None:
    raw = write_goodreads(tmp_path / "gr")
    books = raw / "goodreads_books_poetry.json.gz"
    books.write_bytes(books.read_bytes()[:-30])
    _assert_fails_cleanly("goodreads", raw, tmp_path / "out", "goodreads_books_poetry.json.gz", "truncated or corrupt")
    archive = movielens_zip(tmp_path / "ml-100k.zip", write_movielens(tmp_path / "fixture"))
    archive.write_bytes(archive.read_bytes()[:200])
    _assert_fails_cleanly("movielens", archive, tmp_path / "out", "ml-100k.zip", "truncated or corrupt")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(Error, match="unknown dataset"):
        prepare.prepare("steam", raw_dir=tmp_path)
    with pytest.raises(Error, match="--seed must be an integer"):
        prepare.prepare("movielens", raw_dir=tmp_path, seed="x")
    with pytest.raises(Error, match="Goodreads genre"):
        prepare.prepare("goodreads", raw_dir=tmp_path, genre="cooking")


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "data.prepare"],  # run from the repository root
        [sys.executable, str(SCRIPT)],  # the old command, here run from another folder
    ],
    ids=["module", "script"],
)
def test_cli(tmp_path: Path, command: list[str]) -> None:
    raw = write_movielens(tmp_path / "ml")
    cwd = ROOT if "-m" in command else tmp_path
    ok = subprocess.run(
        [*command, "--dataset", "movielens", "--raw_dir", str(raw), "--out_dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )
    assert ok.returncode == 0, ok.stderr
    assert "12 users, 40 items, 240 interactions" in ok.stdout and "train" in ok.stdout
    bad = subprocess.run(
        [*command, "--dataset", "movielens", "--raw_dir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert bad.stdout == ""


def test_package_imports() -> None:
    """`from data import prepare` gives the command's module; the old single module's API is in it."""
    from data import prepare as imported

    assert imported.prepare is prepare.prepare and imported.DataPreparationError is DataPreparationError
    assert imported.SPLITS == ("train", "val", "test") and set(imported.READERS) == {"lastfm", "movielens", "goodreads"}


# ---------------------------------------------------------------------------
# The original release's LastFM split (--dataset lastfm-sdpo)
# ---------------------------------------------------------------------------

SDPO_SAMPLE = SHARED / "data" / "sdpo-sample" / "lastfm-val.json"


def _release_files(folder: Path) -> dict[str, bytes]:
    """Three split files in the release's format: slices of its real val file when ../shared has it."""
    if SDPO_SAMPLE.exists():
        records = json.loads(SDPO_SAMPLE.read_text(encoding="utf-8"))
    else:
        names = [f"Band {i}" for i in range(40)]
        records = [{"historyList": "::".join(names[i:i + 4]), "itemList": names[i + 4:i + 24],
                    "trueSelection": names[i + 4]} for i in range(16)]
    parts = {"train": records[:300], "val": records[300:400], "test": records[400:500]}
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for split, part in parts.items():
        contents[split] = json.dumps(part, indent=1).encode("utf-8")
        (folder / f"lastfm-{split}.json").write_bytes(contents[split])
    return contents


def test_release_split_downloads_validates_and_records_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    import data_interface as di

    contents = _release_files(tmp_path / "www")
    with serve(tmp_path / "www") as base:
        monkeypatch.setenv("SDPO_DOWNLOAD_BASE", base)
        stats = prepare.prepare("lastfm-sdpo", out_dir=tmp_path / "out")
    for split, content in contents.items():
        assert (tmp_path / "out" / f"{split}.json").read_bytes() == content  # used as published
        assert stats["files_sha256"][f"lastfm-{split}.json"] == hashlib.sha256(content).hexdigest()
        assert stats["splits"][split]["samples"] == len(json.loads(content))
    assert stats["domain"] == "music" and stats["dataset"] == "lastfm-sdpo"
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats
    # The stage scripts read the folder as a dataset, with the music templates.
    files = di.resolve_data_files(str(tmp_path / "out"))
    assert files.domain == "music" and len(di.load_records(files.test)) == stats["splits"]["test"]["samples"]
    # Cached: a second run needs no server; a --raw_dir holding the three files gives the same output.
    assert prepare.prepare("lastfm-sdpo", out_dir=tmp_path / "again") == stats
    assert prepare.prepare("lastfm-sdpo", raw_dir=tmp_path / "www", out_dir=tmp_path / "local") == stats


def test_release_split_counts_users_of_sliding_windows() -> None:
    import data_interface as di

    def rec(history: str, target: str) -> di.Record:
        return di.Record(tuple(history), ("x", "y", target), target)

    # user 1: abc->d, abcd->e; user 2: pqr->s; user 3 starts with a history that does not continue s.
    records = [rec("abc", "d"), rec("abcd", "e"), rec("pqr", "s"), rec("zzz", "q")]
    assert lastfm_sdpo.count_sequences(records) == 3
    full = [rec("abcdefghij", "k"), rec("bcdefghijk", "l")]  # a 10-item window slides by one
    assert lastfm_sdpo.count_sequences(full) == 1


def test_release_split_offline_and_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Error) as info:  # SDPO_DOWNLOAD_BASE is the discard port: nobody answers
        prepare.prepare("lastfm-sdpo", out_dir=tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and "lastfm-train.json, lastfm-val.json, lastfm-test.json" in message
    assert "--raw_dir" in message and "sample_data/lastfm-sft-cans20" in message
    _release_files(tmp_path / "www")
    bad = json.loads((tmp_path / "www" / "lastfm-val.json").read_text())
    bad[3]["trueSelection"] = "Nobody"
    (tmp_path / "www" / "lastfm-val.json").write_text(json.dumps(bad))
    with serve(tmp_path / "www") as base:
        monkeypatch.setenv("SDPO_DOWNLOAD_BASE", base)
        with pytest.raises(Error, match=r"/lastfm-val.json: record 3: field 'trueSelection' 'Nobody'") as info:
            prepare.prepare("lastfm-sdpo", out_dir=tmp_path / "out")
    assert str(info.value).startswith("http://127.0.0.1:")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "cache" / "raw" / "lastfm-sdpo").iterdir()) == ["lastfm-train.json"]
    (tmp_path / "www" / "lastfm-test.json").unlink()
    with pytest.raises(Error, match="lastfm-test.json: file missing; to work offline put"):
        prepare.prepare("lastfm-sdpo", raw_dir=tmp_path / "www", out_dir=tmp_path / "out")
