"""prompt_use.py: candidate mass, ranking with a swapped history, history shift; checked on scorers whose
answers are known (a list-copier, an item prior, a history reader) and end to end on the tiny model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import data_interface as di
import prompt_use
import runtime
from conftest import REPO

TEMPLATES = ["Played: [HistoryHere]. Choose from [CansHere]. Answer:",
             "History [HistoryHere]\nCandidates [CansHere]\nAnswer:"]


def successor(item: str) -> str:
    return "next-" + item


def records(count: int = 40) -> list[di.Record]:
    """Record i: history (h{i}a, h{i}b, h{i}c), target = successor of its last item, among 20 candidates."""
    out = []
    for i in range(count):
        history = (f"h{i}a", f"h{i}b", f"h{i}c")
        target = successor(history[-1])
        others = [successor(f"h{(i + k) % count}c") for k in range(1, 20)]
        candidates = tuple(sorted([target, *others]))
        out.append(di.Record(history, candidates, target))
    return out


def copier(prompts, candidates):
    """Puts all its mass on the list it was given, evenly."""
    return [[math.log(1 / len(names))] * len(names) for names in candidates]


def item_prior(prompts, candidates):
    """Scores an item by its name alone: blind to the user."""
    return [[-0.1 * len(name) - 0.01 * sum(map(ord, name)) for name in names] for names in candidates]


def history_reader(prompts, candidates):
    """Scores a candidate high when the successor of an item named in the prompt's history is that candidate."""
    rows = []
    for prompt, names in zip(prompts, candidates):
        history_text = prompt.split("[C")[0].split("Choose")[0].split("Candidates")[0]
        rows.append([0.0 if f'"{name.removeprefix("next-")}"' in history_text else -5.0 for name in names])
    return rows


def test_other_histories_are_a_seeded_derangement():
    data = records(10)
    swapped = prompt_use.other_histories(data, seed=0)
    assert all(new != record.history for new, record in zip(swapped, data))
    assert sorted(swapped) == sorted(record.history for record in data)  # each history used once
    assert prompt_use.other_histories(data, seed=0) == swapped
    assert prompt_use.other_histories(data, seed=1) != swapped
    with pytest.raises(runtime.UsageError, match="at least 2 prompts"):
        prompt_use.other_histories(data[:1])


def test_a_model_that_copies_the_list_has_all_its_mass_on_the_candidates():
    metrics = prompt_use.prompt_use_metrics(copier, records(), TEMPLATES)
    assert metrics["candidate_mass"] == pytest.approx(1.0)
    assert metrics["history_shift"] == 0.0 and metrics["n"] == 40


def test_an_item_prior_ranks_the_same_whatever_the_history():
    metrics = prompt_use.prompt_use_metrics(item_prior, records(), TEMPLATES)
    assert metrics["history_shift"] == 0.0
    assert metrics["rank_hr@1"] == metrics["rank_hr@1_other_history"]
    assert metrics["candidate_mass"] < 0.01  # log-probs around -7: far from a list-copier


def test_a_history_reader_loses_its_hits_when_the_history_is_swapped():
    metrics = prompt_use.prompt_use_metrics(history_reader, records(), TEMPLATES)
    assert metrics["rank_hr@1"] == 1.0
    assert metrics["rank_hr@1_other_history"] < 0.2  # the swapped history names another record's target
    # per prompt the own target drops by 5 nats, and the partner's target rises by 5 when it is a candidate
    data = records()
    moved = [1 + (successor(h[-1]) in r.candidates) for r, h in zip(data, prompt_use.other_histories(data))]
    assert metrics["history_shift"] == pytest.approx(sum(moved) * 5.0 / (20 * len(data)))


def test_the_swapped_prompt_keeps_the_template_and_the_candidates():
    seen: list[list[str]] = []

    def recorder(prompts, candidates):
        seen.append(list(prompts))
        return copier(prompts, candidates)

    data = records()
    prompt_use.prompt_use_metrics(recorder, data, TEMPLATES, seed=3)
    own, swapped = seen
    for record, new_history, a, b in zip(data, prompt_use.other_histories(data, 3), own, swapped):
        assert a.replace(di.format_items(record.history), "H") == b.replace(di.format_items(new_history), "H")
    assert len({p.split("\n")[0][:7] for p in own}) == 2  # both templates are in use


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "prompt_use.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_measures_the_tiny_model_and_refuses_bad_input_in_one_line(tmp_path: Path, synthetic_dir: Path):
    out = tmp_path / "use"
    result = run_cli("--dataset", str(synthetic_dir), "--output_dir", str(out), "--max_samples", "24")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 24 and 0 < metrics["candidate_mass"] < 1 and metrics["history_shift"] > 0
    assert 0 <= metrics["rank_hr@1"] <= 1 and 0 <= metrics["rank_hr@1_other_history"] <= 1
    for args, fragment in [(("--output_dir", str(out)), "--overwrite_output_dir"),
                           (("--output_dir", str(tmp_path / "x"), "--resume_from_checkpoint", str(tmp_path / "no")),
                            "does not exist"),
                           (("--output_dir", str(tmp_path / "y"), "--max_samples", "1"), "at least 2 prompts")]:
        bad = run_cli("--dataset", str(synthetic_dir), *args)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], \
            bad.stderr
