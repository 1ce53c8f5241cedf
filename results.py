"""The results table of a run: each trained stage next to two reference points on the same prompts.

    python results.py --output_root outputs/quickstart --dataset lastfm

Reads `OUTPUT_ROOT/eval/<method>/metrics.json` (written by inference.py, or by `python -m baselines`)
and the stages' `run_info.json` (training wall time), adds `random` (a uniformly random candidate, exact
expectation) and `popularity` (candidates ordered by how often each is the true item in the training
split) on the same seeded sample of test prompts, prints a table and writes `OUTPUT_ROOT/results.json`
as {"sft": {"hr@1", "valid_ratio", "rank_hr@1", "rank_ndcg@5", "n", "seconds"}, ...}. HR@1 and
ValidRatio come from generation (the paper's metric); rankHR@1 / rankNDCG@5 from ranking the 20
candidates by log-probability (see inference.py). Evaluations run with `--constrained_decoding` add
`constrained_hr@1` / `constrained_valid_ratio` (HR@1cons, Validcons: greedy decoding restricted to the
candidates' names).
"""

from __future__ import annotations

import json
from pathlib import Path

import data_interface as di
import runtime

METHODS = ("base", "sft", "dpo", "sdpo")  # base: the model with no training (zero-shot)


# (metrics.json key, header, width): generation columns (the paper's metric) under this project's counting
# rule and under the original release's plain substring rule ("orig"), then ranking columns.
COLUMNS = (("hr@1", "HR@1", 8), ("valid_ratio", "ValidRatio", 12), ("hr@1_original", "HR@1orig", 10),
           ("valid_ratio_original", "Validorig", 11), ("rank_hr@1", "rankHR@1", 10), ("rank_ndcg@5", "rankNDCG@5", 12))
# Shown only when some row has them (`inference.py --constrained_decoding`: decoding restricted to the candidates).
CONSTRAINED_COLUMNS = (("constrained_hr@1", "HR@1cons", 10), ("constrained_valid_ratio", "Validcons", 11))
LEGEND = ("HR@1 / ValidRatio: generation, one candidate named (this project's rule); *orig: the original release's "
          "substring rule; *cons: generation constrained to the candidates' names; rank*: the 20 candidates ranked "
          "by log-probability; '-': not computed for that row")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def evaluated_methods(root: Path) -> list[str]:
    """The folders under `root/eval` with a metrics.json: the stages in pipeline order, then any other
    (e.g. conventional recommenders written there by `python -m baselines --output_dir ROOT/eval`)."""
    found = sorted(path.parent.name for path in (root / "eval").glob("*/metrics.json"))
    return [m for m in METHODS if m in found] + [m for m in found if m not in METHODS]


def collect(output_root: str = "outputs/quickstart", dataset: str = "lastfm", train_file: str | None = None,
            test_file: str | None = None, max_samples: int | None = None, seed: int = 0) -> dict:
    """Build, print and save the results table; returns it.

    The reference rows are computed on the evaluations' seeded random sample of test prompts: by default the
    one their metrics.json files record (`n`, `seed`); `max_samples` and `seed`, when given, must be theirs.
    """
    root = Path(output_root)
    evaluations = {method: _read_json(root / "eval" / method / "metrics.json") for method in evaluated_methods(root)}
    if max_samples is None and evaluations:
        max_samples, seed = _recorded_sample(root / "eval", evaluations)
    data = runtime.load_stage_data(("train", "test"), dataset, train_file, None, test_file)
    test = di.sample_records(data.test, max_samples, seed)
    results: dict[str, dict] = {}
    for method, metrics in evaluations.items():
        if metrics.get("n") != len(test):
            raise runtime.UsageError(f"{root / 'eval' / method / 'metrics.json'}: evaluated on {metrics.get('n')} "
                                     f"prompts, but --max_samples gives {len(test)}: pass the evaluation's value")
        train_seconds = _read_json(root / method / "run_info.json").get("seconds", 0.0)
        results[method] = {key: metrics[key] for key, _, _ in COLUMNS + CONSTRAINED_COLUMNS if key in metrics}
        results[method]["n"] = metrics["n"]
        results[method]["seconds"] = round(train_seconds + metrics.get("seconds", 0.0), 1)
    results.update(di.reference_metrics(data.train, test))
    runtime.save_json(root / "results.json", results)
    print(format_table(results))
    print(LEGEND)
    print(f"written to {root / 'results.json'}")
    return results


def _recorded_sample(folder: Path, evaluations: dict[str, dict]) -> tuple[int, int]:
    """The (number of prompts, seed) every evaluation ran on; a seed not recorded (older files) is 0."""
    (first, reference), *others = evaluations.items()
    for key, what in (("n", "on {} and {} prompts"), ("seed", "with seeds {} and {}")):
        for method, metrics in others:
            if metrics.get(key, 0) != reference.get(key, 0):
                found = what.format(reference.get(key, 0), metrics.get(key, 0))
                raise runtime.UsageError(
                    f"{folder}: {first} and {method} were evaluated {found}: evaluate every method on the same "
                    "sample (--max_samples, --seed) to compare them")
    return reference["n"], reference.get("seed", 0)


def format_table(results: dict) -> str:
    """Generation columns (HR@1, ValidRatio; constrained ones when any row has them) and ranking columns
    (rankHR@1, rankNDCG@5); '-' = not run."""
    constrained = any(key in row for row in results.values() for key, _, _ in CONSTRAINED_COLUMNS)
    columns = COLUMNS[:4] + (CONSTRAINED_COLUMNS if constrained else ()) + COLUMNS[4:]
    lines = [f"{'method':<12}" + "".join(f"{header:>{width}}" for _, header, width in columns)
             + f"{'n':>7}{'wall time':>12}"]
    for method, row in results.items():
        values = "".join(f"{row[key]:>{width}.4f}" if key in row else f"{'-':>{width}}" for key, _, width in columns)
        seconds = f"{row['seconds']:.0f} s" if "seconds" in row else "-"
        lines.append(f"{method:<12}{values}{row['n']:>7}{seconds:>12}")
    return "\n".join(lines)


if __name__ == "__main__":
    runtime.main(collect)
