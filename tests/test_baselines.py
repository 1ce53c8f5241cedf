"""Tests for baselines/: GRU4Rec, Caser and SASRec learn on synthetic data, run end to end on a slice of
real LastFM, are reproducible, and bad input ends with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data_interface as di
from baselines.models import MODELS
from baselines.train import run
from conftest import REPO, SHARED
from data import prepare, synthetic

NEURAL = sorted(MODELS)
# Small and fast: the synthetic set has 2,679 training records; a few epochs at a higher rate suffice.
FAST = {"epochs": 8, "patience": 3, "batch_size": 64, "learning_rate": 3e-3, "threads": 1, "progress": False}


@pytest.fixture(scope="module")
def synthetic_results(tmp_path_factory) -> tuple[dict, dict]:
    folder = tmp_path_factory.mktemp("synthetic300")
    stats = synthetic.generate(folder, num_users=300, seed=0)
    results = run(dataset=str(folder), model="all", output_dir=str(folder / "out"), **FAST)
    return results, stats


@pytest.mark.parametrize("name", NEURAL)
def test_models_beat_popularity_and_stay_below_the_oracle(synthetic_results, name: str) -> None:
    results, stats = synthetic_results
    assert results[name]["hr@1"] > results["popularity"]["hr@1"] + 0.05, results
    assert results[name]["hr@1"] < stats["best_hr@1"]["test"], results


def test_metrics_have_the_evaluation_shape(synthetic_results) -> None:
    results, _ = synthetic_results
    ranking_keys = set(di.ranking_metrics([1, 2]))
    for name in NEURAL:
        metrics = results[name]
        assert ranking_keys | {"hr@1", "valid_ratio", "seconds", "train_seconds", "epochs", "best_epoch", "seed"} <= set(metrics)
        assert metrics["hr@1"] == metrics["rank_hr@1"] and metrics["valid_ratio"] == 1.0
        assert 1 <= metrics["best_epoch"] <= metrics["epochs"] <= FAST["epochs"]
    assert results["popularity"]["n"] == results["random"]["n"] == results["sasrec"]["n"]


def test_predictions_agree_with_metrics(tmp_path: Path, synthetic_dir: Path) -> None:
    out = tmp_path / "out"
    metrics = run(dataset=str(synthetic_dir), model="gru4rec", output_dir=str(out), max_samples=30,
                  **{**FAST, "epochs": 1})["gru4rec"]
    rows = [json.loads(line) for line in (out / "gru4rec" / "predictions.jsonl").read_text().splitlines()]
    assert json.loads((out / "gru4rec" / "metrics.json").read_text()) == metrics
    assert len(rows) == metrics["n"] == 30
    assert di.ranking_metrics([row["rank"] for row in rows])["rank_mrr"] == metrics["rank_mrr"]
    assert all(row["hit"] == (row["prediction"] == row["target"]) for row in rows)
    # --max_samples is the seeded random sample every method uses, not the first records
    test = di.load_records(synthetic_dir / "test.json")
    assert [row["target"] for row in rows] == [r.target for r in di.sample_records(test, 30, 0)]


def test_same_seed_gives_identical_metrics(tmp_path: Path, synthetic_dir: Path) -> None:
    def metrics(seed: int, folder: str) -> dict:
        result = run(dataset=str(synthetic_dir), model="gru4rec,caser,sasrec", output_dir=str(tmp_path / folder),
                     seed=seed, **{**FAST, "epochs": 2})
        return {name: {k: v for k, v in m.items() if "seconds" not in k} for name, m in result.items()}

    first = metrics(0, "a")
    assert metrics(0, "b") == first
    assert metrics(1, "c") != first


def test_padding_does_not_change_scores() -> None:
    """Left padding is invisible: a history scores the same alone and beside a longer one in a batch."""
    torch.manual_seed(0)
    short, long = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 3, 1, 4]]), torch.tensor([[5, 9, 2, 6, 5, 3, 5, 8, 9, 7]])
    for name, model_class in MODELS.items():
        model = model_class(10, dim=16).eval()
        with torch.no_grad():
            alone, batched = model(short), model(torch.cat([short, long]))[:1]
        torch.testing.assert_close(alone, batched, msg=name)


# ----------------------------------------------------------------------------------------------
# Real LastFM (shared/, read-only)


@pytest.fixture(scope="module")
def lastfm_slice(tmp_path_factory) -> Path:
    raw = SHARED / "data" / "raw" / "lastfm-2k"
    if not raw.is_dir():
        pytest.skip(f"shared raw data not found at {raw} (read-only copy of the official archive)")
    prepared = tmp_path_factory.mktemp("lastfm")
    prepare.prepare("lastfm", raw_dir=raw, out_dir=prepared)
    return prepared


def test_lastfm_slice_end_to_end(lastfm_slice: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = run(dataset=str(lastfm_slice), model="all", output_dir=str(out), max_samples=200,
                  max_train_samples=2000, max_val_samples=200, **{**FAST, "epochs": 2})
    for name in (*NEURAL, "popularity", "random"):
        assert (out / name / "metrics.json").exists()
        assert results[name]["n"] == 200
        assert 0.0 <= results[name]["hr@1"] <= 1.0
    for name in NEURAL:
        assert sum(1 for _ in (out / name / "predictions.jsonl").open()) == 200


# ----------------------------------------------------------------------------------------------
# Bad input: one line, exit code 1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "baselines", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def assert_one_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_model_is_one_line(tmp_path: Path, synthetic_dir: Path) -> None:
    assert_one_line(run_cli("--dataset", str(synthetic_dir), "--model", "bert4rec", "--output_dir", str(tmp_path)),
                    "unknown model 'bert4rec'")


def test_unprepared_dataset_is_one_line(tmp_path: Path) -> None:
    prepared = (REPO / "data" / "goodreads" / "train.json").exists()
    if prepared:
        pytest.skip("data/goodreads is prepared in this checkout")
    assert_one_line(run_cli("--dataset", "goodreads", "--model", "sasrec", "--output_dir", str(tmp_path)),
                    "goodreads", "not prepared")


def test_target_outside_candidates_is_one_line(tmp_path: Path, synthetic_dir: Path) -> None:
    records = json.loads((synthetic_dir / "test.json").read_text())
    records[2]["trueSelection"] = "Nobody At All"
    bad = tmp_path / "bad_test.json"
    bad.write_text(json.dumps(records))
    assert_one_line(run_cli("--dataset", str(synthetic_dir), "--test_file", str(bad), "--model", "caser",
                            "--output_dir", str(tmp_path / "out")),
                    "bad_test.json", "record 2", "trueSelection")


def test_model_lists_are_read_as_the_cli_passes_them() -> None:
    from baselines.train import parse_models

    # fire turns `--model gru4rec,caser` into a tuple; a plain string may hold commas.
    assert parse_models(("gru4rec", "caser")) == ["gru4rec", "caser"]
    assert parse_models("SASRec, popularity") == ["sasrec", "popularity"]
    assert parse_models("all") == ["gru4rec", "caser", "sasrec", "popularity", "random"]
    with pytest.raises(Exception, match="unknown model 'bert4rec'"):
        parse_models(("gru4rec", "bert4rec"))
