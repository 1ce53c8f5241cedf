"""Tests of the synthetic dataset generator (data/synthetic.py)."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from data import synthetic

ROOT = Path(__file__).resolve().parents[1]

SPLITS = ("train", "val", "test")
OUTPUT_FILES = ("train.json", "val.json", "test.json", "id2name.txt", "stats.json")
SMALL = {"num_users": 60, "num_genres": 8, "items_per_genre": 40}


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default configuration, generated once for the whole module."""
    folder = tmp_path_factory.mktemp("default")
    synthetic.generate(str(folder))
    return folder


def load_split(folder: Path, split: str) -> list[dict[str, Any]]:
    return json.loads((folder / f"{split}.json").read_text(encoding="utf-8"))


def load_names(folder: Path) -> list[str]:
    lines = (folder / "id2name.txt").read_text(encoding="utf-8").splitlines()
    ids, names = zip(*(line.split("::", 1) for line in lines))
    assert [int(i) for i in ids] == list(range(len(lines)))
    return list(names)


def test_record_format(default_dir: Path) -> None:
    names = set(load_names(default_dir))
    for split in SPLITS:
        records = load_split(default_dir, split)
        assert records, split
        for record in records:
            assert set(record) == {"historyList", "itemList", "trueSelection"}
            history = record["historyList"].split("::")
            candidates = record["itemList"]
            assert 3 <= len(history) <= 10
            assert len(set(history)) == len(history)
            assert len(candidates) == 20 and len(set(candidates)) == 20
            assert record["trueSelection"] in candidates
            assert not set(history) & set(candidates)
            assert set(history) <= names and set(candidates) <= names


def test_names_are_unambiguous(default_dir: Path) -> None:
    names = load_names(default_dir)
    assert len(names) == len(set(names)) == 600
    assert not any("::" in name for name in names)
    lowered = [name.lower() for name in names]
    for i, name in enumerate(lowered):
        assert not any(name in other for j, other in enumerate(lowered) if j != i), names[i]


def test_assert_valid_names_rejects_collisions() -> None:
    synthetic.assert_valid_names(["Iron Throne", "Velvet Harbor Trio"])
    for bad in (["Velvet Harbor", "Velvet Harbor Trio"], ["A B", "A B"], ["A::B"]):
        with pytest.raises(AssertionError):
            synthetic.assert_valid_names(bad)


def test_stats_match_files(default_dir: Path) -> None:
    stats = json.loads((default_dir / "stats.json").read_text(encoding="utf-8"))
    assert stats["domain"] == "music"
    assert stats["users"] == 600 and stats["items"] == 600
    for split in SPLITS:
        assert stats["samples"][split] == len(load_split(default_dir, split))
    # Defaults: a few thousand train samples.
    assert 2000 <= stats["samples"]["train"] <= 10000


def test_reference_hit_rates_are_ordered(default_dir: Path) -> None:
    stats = json.loads((default_dir / "stats.json").read_text(encoding="utf-8"))
    for split in SPLITS:
        best = stats["best_hr@1"][split]
        posterior = stats["posterior_hr@1"][split]
        popularity = stats["popularity_hr@1"][split]
        random = stats["random_hr@1"][split]
        assert random == pytest.approx(0.05)
        assert best > posterior > popularity > random, split
        # "Well above": the signal is strong enough to be worth learning.
        assert best > popularity + 0.15 and popularity > 2 * random, split


def test_split_sizes_are_8_1_1_by_user(default_dir: Path) -> None:
    stats = json.loads((default_dir / "stats.json").read_text(encoding="utf-8"))
    assert stats["users_per_split"] == {"train": 480, "val": 60, "test": 60}
    samples = stats["samples"]
    total = sum(samples.values())
    assert samples["train"] / total == pytest.approx(0.8, abs=0.04)
    for split in ("val", "test"):
        assert samples[split] / total == pytest.approx(0.1, abs=0.03)


def test_users_do_not_cross_splits() -> None:
    config = synthetic.SyntheticConfig(**SMALL)
    _, users, samples = synthetic.build_samples(config)
    assert sorted(u for members in users.values() for u in members) == list(range(config.num_users))
    owners = {split: {s.user for s in samples[split]} for split in SPLITS}
    assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
    assert not owners["val"] & owners["test"]


def test_byte_identical_for_same_seed(tmp_path: Path, default_dir: Path) -> None:
    synthetic.generate(str(tmp_path / "a"), **SMALL, seed=3)
    synthetic.generate(str(tmp_path / "b"), **SMALL, seed=3)
    synthetic.generate(str(tmp_path / "c"), **SMALL, seed=4)
    for name in OUTPUT_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "train.json").read_bytes() != (tmp_path / "c" / "train.json").read_bytes()
    # Regenerating in place is also identical and leaves no temp files behind.
    synthetic.generate(str(tmp_path / "a"), **SMALL, seed=3)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(OUTPUT_FILES)
    assert (tmp_path / "a" / "train.json").read_bytes() == (tmp_path / "b" / "train.json").read_bytes()


def test_returned_stats_equal_file(tmp_path: Path) -> None:
    stats = synthetic.generate(str(tmp_path), **SMALL)
    assert json.loads((tmp_path / "stats.json").read_text(encoding="utf-8")) == stats


def test_invalid_configurations_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"num_genres must be in 1\.\.{len(synthetic.GENRE_POOLS)}, got "):
        synthetic.generate(str(tmp_path), num_genres=len(synthetic.GENRE_POOLS) + 1)
    with pytest.raises(ValueError, match="items_per_genre"):
        synthetic.generate(str(tmp_path), items_per_genre=200)
    with pytest.raises(ValueError, match="items_per_genre must exceed max_seq_len"):
        synthetic.generate(str(tmp_path), items_per_genre=20)  # a genre could run dry
    assert not any(tmp_path.iterdir())


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    subprocess.run(
        [sys.executable, str(ROOT / "data" / "synthetic.py"), "--out_dir", str(out)]
        + ["--num_users", "40", "--seed", "1"],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["users"] == 40 and stats["config"]["seed"] == 1
