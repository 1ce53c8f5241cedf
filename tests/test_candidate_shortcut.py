"""candidate_shortcut.py: negatives seeded by the target (the original protocol) give the answer away; negatives
drawn per sample do not (seconds; no model)."""

from __future__ import annotations

import random

import pytest

import candidate_shortcut
import data_interface as di
from conftest import LASTFM_SAMPLE
from data import protocol

N_ITEMS = 300


def _records(seeded_by_target: bool, users: range) -> list[di.Record]:
    """Sliding-window samples of random user sequences, candidates by data.protocol's original (seeded by the
    target) or per-sample protocol."""
    records = []
    for user in users:
        rng = random.Random(user)
        sequence = rng.sample(range(N_ITEMS), 15)
        mode = "original" if seeded_by_target else "per_sample"
        for history, candidates, target in protocol.make_samples(sequence, N_ITEMS, 0, mode, str(user)):
            records.append(di.Record(tuple(map(str, history)), tuple(map(str, candidates)), str(target)))
    return records


def _hr1(seeded_by_target: bool) -> float:
    train, test = _records(seeded_by_target, range(0, 200)), _records(seeded_by_target, range(200, 260))
    hits = candidate_shortcut.memorisation_hits(train, test)
    return sum(hits) / len(hits)


def test_negatives_seeded_by_the_target_let_a_history_blind_rule_find_the_target():
    assert _hr1(seeded_by_target=True) > 0.5
    shared = candidate_shortcut.overlaps(_records(True, range(200)))
    assert shared["same_target_overlap"] > 0.2 > 0.1 > shared["other_target_overlap"]


def test_negatives_drawn_per_sample_leave_the_rule_near_random():  # data.prepare --candidates per_sample
    assert _hr1(seeded_by_target=False) < 0.15
    shared = candidate_shortcut.overlaps(_records(False, range(200)))
    assert shared["same_target_overlap"] == pytest.approx(shared["other_target_overlap"], abs=0.05)


def test_the_rule_never_reads_the_history():
    train, test = _records(True, range(0, 50)), _records(True, range(50, 60))
    blind = [di.Record(("x",), record.candidates, record.target) for record in test]
    assert candidate_shortcut.memorisation_hits(train, test) == candidate_shortcut.memorisation_hits(train, blind)


@pytest.mark.skipif(not LASTFM_SAMPLE.exists(), reason="../shared/data/sdpo-sample/lastfm-val.json not present")
def test_the_original_releases_lastfm_split_has_the_same_property():
    records = di.load_records(LASTFM_SAMPLE)
    shared = candidate_shortcut.overlaps(records)
    assert shared["same_target_overlap"] > 0.25 and shared["other_target_overlap"] < 0.02


def test_the_cli_prints_one_line_and_returns_the_numbers(synthetic_dir, capsys):
    result = candidate_shortcut.measure(dataset=str(synthetic_dir))
    assert 0 <= result["memorisation_hr@1"] <= 1 and result["n_test"] > 0
    assert "memorisation rule HR@1" in capsys.readouterr().out
