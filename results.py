"""The results table of a run: each trained stage next to two reference points on the same prompts.

    python results.py --output_root outputs/quickstart --dataset lastfm --max_samples 500

Reads `OUTPUT_ROOT/eval/<method>/metrics.json` (written by inference.py) and the stages'
`run_info.json` (training wall time), adds `random` (a uniformly random candidate, exact expectation)
and `popularity` (the candidate most often the true item in the training split), prints a table and
writes `OUTPUT_ROOT/results.json` as {"sft": {"hr@1", "valid_ratio", "n", "seconds"}, ...}.
"""

from __future__ import annotations

import json
from pathlib import Path

import data_interface as di
import runtime

METHODS = ("base", "sft", "dpo", "sdpo")  # base: the model with no training (zero-shot)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def collect(output_root: str = "outputs/quickstart", dataset: str = "lastfm", train_file: str | None = None,
            test_file: str | None = None, max_samples: int | None = None) -> dict:
    """Build, print and save the results table; returns it."""
    root = Path(output_root)
    data = runtime.load_stage_data(("train", "test"), dataset, train_file, None, test_file)
    test = data.test[:max_samples] if max_samples else data.test
    results: dict[str, dict] = {}
    for method in METHODS:
        metrics = _read_json(root / "eval" / method / "metrics.json")
        if not metrics:
            continue
        train_seconds = _read_json(root / method / "run_info.json").get("seconds", 0.0)
        results[method] = {key: metrics[key] for key in ("hr@1", "valid_ratio", "n")}
        results[method]["seconds"] = round(train_seconds + metrics.get("seconds", 0.0), 1)
    results["random"] = di.random_choice_metrics(test)
    popular = di.popularity_predictions(data.train, test)
    results["popularity"] = di.recommendation_metrics(popular, [record.target for record in test])
    runtime.save_json(root / "results.json", results)
    print(format_table(results))
    print(f"written to {root / 'results.json'}")
    return results


def format_table(results: dict) -> str:
    lines = [f"{'method':<12}{'HR@1':>8}{'ValidRatio':>12}{'n':>7}{'wall time':>12}"]
    for method, row in results.items():
        seconds = f"{row['seconds']:.0f} s" if "seconds" in row else "-"
        lines.append(f"{method:<12}{row['hr@1']:>8.4f}{row['valid_ratio']:>12.4f}{row['n']:>7}{seconds:>12}")
    return "\n".join(lines)


if __name__ == "__main__":
    runtime.main(collect)
