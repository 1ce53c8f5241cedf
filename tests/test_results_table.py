"""results.py reads the sample its evaluations were run on: `python results.py --output_root ROOT` after the
launchers needs no --max_samples or --seed, and evaluations of different samples are refused."""

from __future__ import annotations

import json

import pytest

import results
import runtime


def _evaluation(root, method: str, n: int, seed: int | None) -> None:
    folder = root / "eval" / method
    folder.mkdir(parents=True)
    metrics = {"n": n, "hr@1": 0.5, "valid_ratio": 1.0, "rank_hr@1": 0.5, "rank_ndcg@5": 0.6, "seconds": 1.0}
    if seed is not None:
        metrics["seed"] = seed
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_the_reference_rows_use_the_evaluations_sample_without_flags(synthetic_dir, tmp_path):
    root = tmp_path / "run"
    for method in ("sft", "sdpo"):
        _evaluation(root, method, 12, seed=3)
    table = results.collect(str(root), str(synthetic_dir))
    assert {row["n"] for row in table.values()} == {12}
    again = tmp_path / "again"
    for method in ("sft", "sdpo"):
        _evaluation(again, method, 12, seed=3)
    assert results.collect(str(again), str(synthetic_dir), max_samples=12, seed=3) == table
    # An evaluation without a recorded seed (older files) counts as seed 0, the default.
    old = tmp_path / "old"
    _evaluation(old, "sft", 12, seed=None)
    assert results.collect(str(old), str(synthetic_dir))["popularity"] == results.collect(
        str(old), str(synthetic_dir), max_samples=12, seed=0)["popularity"]


@pytest.mark.parametrize("second, message", [((10, 3), "on 12 and 10 prompts"), ((12, 4), "with seeds 3 and 4")])
def test_evaluations_of_different_samples_are_refused_in_one_line(synthetic_dir, tmp_path, second, message):
    root = tmp_path / "run"
    _evaluation(root, "sft", 12, seed=3)
    _evaluation(root, "sdpo", *second)
    with pytest.raises(runtime.UsageError, match=message) as error:
        results.collect(str(root), str(synthetic_dir))
    assert "\n" not in str(error.value) and str(root / "eval") in str(error.value)
    with pytest.raises(runtime.UsageError, match="evaluated on 12 prompts, but --max_samples gives 10"):
        results.collect(str(root), str(synthetic_dir), max_samples=10, seed=3)
