"""Decoding constrained to the candidates: every output names one candidate, for multi-token BPE names too."""

from __future__ import annotations

import json

import pytest
import torch

import data_interface as di
import inference
import models
import results
from constrained_decoding import CandidateTree, candidate_trees

EOS, PAD = 2, 0
# Multi-token names under a small byte-level BPE with no per-item tokens: "Muse" is a prefix of two other
# names, and accented names are several bytes each.
NAMES = ("Muse", "Muse Band", "Muse Band Live", "Björk", "Sigur Rós", "Beyoncé", "AC/DC", "Röyksopp", "The The",
         "Radiohead", "Coldplay", "Abba", "Daft Punk", "Nina Simone", "Queen", "Blur", "Oasis", "Pulp", "Suede",
         "Elbow", "Keane", "Travis")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()  # tiny matrices: one thread avoids OpenMP spin-waiting on a busy machine
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tree_allows_only_continuations_of_candidates_and_names_the_finished_one():
    tree = CandidateTree(["a", "a b", "c"], [[5, EOS], [5, 7, EOS], [8, 9, EOS]], EOS)
    assert sorted(tree.allowed_tokens([])) == [5, 8]
    assert sorted(tree.allowed_tokens([5])) == [EOS, 7]  # "a" is a prefix of "a b": stop or go on
    assert tree.allowed_tokens([5, 7]) == [EOS]
    assert tree.allowed_tokens([5, EOS, PAD, PAD]) == [EOS]  # finished rows are padded by generate
    assert tree.longest == 3
    assert [tree.name_of(ids) for ids in ([5, EOS, PAD], [5, 7, EOS], [8, 9, EOS], [5], [5, 7])] == \
        ["a", "a b", "c", None, None]
    with pytest.raises(ValueError, match="left the candidates"):
        tree.allowed_tokens([9])
    with pytest.raises(ValueError, match="EOS"):
        CandidateTree(["a"], [[5]], EOS)


@pytest.fixture(scope="module")
def bpe_setup():
    """Records over NAMES, music prompts, a byte-level BPE tokenizer without item tokens and a random tiny LLaMA."""
    templates = di.load_templates(di.PROMPT_ROOT / "music.txt")
    records = []
    for index in range(10):
        candidates = tuple(NAMES[(index + k) % len(NAMES)] for k in range(20))
        history = tuple(NAMES[(index * 5 + k) % len(NAMES)] for k in range(2 + index % 4))  # prompt lengths differ
        records.append(di.Record(history, candidates, candidates[index % 20]))
    prompts = [di.build_prompt(record, templates) for record in records]
    tokenizer = models.build_tiny_tokenizer(prompts, item_names=[], bpe_vocab_size=400)
    model = models.build_tiny_model(tokenizer, seed=0).eval()
    return records, templates, prompts, tokenizer, model


def test_names_are_multi_token_and_constrained_to_their_ids_after_the_answer_cue(bpe_setup):
    records, _, prompts, tokenizer, _ = bpe_setup
    tree_sequences = di.encode_completions(tokenizer, prompts[0], [di.completion_text(n) for n in NAMES])
    bare = {name: tokenizer(name, add_special_tokens=False)["input_ids"] for name in NAMES}
    assert all(len(ids) > 2 for ids in tree_sequences)  # at least two name tokens, then EOS
    assert sum(ids[:-1] != bare[name] for name, ids in zip(NAMES, tree_sequences)) >= len(NAMES) // 2
    muse, band = tree_sequences[0][:-1], tree_sequences[1][:-1]
    assert band[:len(muse)] == muse  # the prefix case holds in token ids, not only in text
    tree = candidate_trees(tokenizer, prompts[:1], [NAMES])[0]
    assert tree.name_of(tree_sequences[3]) == NAMES[3] and tree.name_of(bare[NAMES[3]] + [EOS]) is None


def test_every_constrained_output_is_a_candidate_name(bpe_setup):
    records, templates, prompts, tokenizer, model = bpe_setup
    assert len({len(di.encode_prompt(tokenizer, prompt)) for prompt in prompts}) > 1  # left padding exercised
    metrics, rows = inference.evaluate_records(model, tokenizer, records, templates, batch_size=4, progress=False,
                                               generation=True, ranking=False, constrained=True)
    for row, record in zip(rows, records):
        assert row["constrained_output"].startswith(" ") and row["constrained_output"][1:] in record.candidates
        assert row["constrained_prediction"] == row["constrained_output"][1:]
    assert metrics["constrained_valid_ratio"] == 1.0
    assert metrics["constrained_hr@1"] == pytest.approx(
        sum(row["constrained_prediction"] == record.target for row, record in zip(rows, records)) / len(records))
    assert metrics["valid_ratio"] < 1.0  # the untrained model's free outputs are not names
    # Rows of one batch with disjoint candidate lists: each row is held to its own prompt's names.
    disjoint = [di.Record(("Blur", "Oasis"), NAMES[:11], NAMES[0]), di.Record(("Pulp", "Keane"), NAMES[11:], NAMES[11])]
    _, rows = inference.evaluate_records(model, tokenizer, disjoint, templates, batch_size=2, progress=False,
                                         generation=True, ranking=False, constrained=True)
    assert [row["constrained_prediction"] in record.candidates for row, record in zip(rows, disjoint)] == [True, True]
    unconstrained, _ = inference.evaluate_records(model, tokenizer, records, templates, batch_size=4, progress=False,
                                                  generation=True, ranking=False)
    assert {k: v for k, v in metrics.items() if not k.startswith("constrained_")} == unconstrained


@pytest.mark.parametrize("eos_bias, expected", [(20.0, "Muse"), (-20.0, "Muse Band Live")],
                         ids=["stop-at-prefix", "extend-prefix"])
def test_a_name_that_is_a_prefix_of_others_is_output_whole_or_extended(bpe_setup, eos_bias, expected):
    """Logits = a bias alone: the tokens of " Muse Band Live" are favoured and EOS is (dis)favoured, so
    greedy decoding stops after " Muse" or goes on to the longest name, and never stops inside a name."""
    _, templates, _, tokenizer, model = bpe_setup
    record = di.Record(("Blur", "Oasis"), NAMES[:20], "Muse")
    prompt = di.build_prompt(record, templates)
    longest = di.encode_completion(tokenizer, prompt, di.completion_text("Muse Band Live"))
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[longest[:-1]] = 10.0
        head.bias[tokenizer.eos_token_id] = eos_bias
    original, model.lm_head = model.lm_head, head
    try:
        outputs = inference.generate_outputs(model, tokenizer, [prompt], progress=False,
                                             constraints=candidate_trees(tokenizer, [prompt], [record.candidates]))
        free = inference.generate_outputs(model, tokenizer, [prompt], progress=False)
    finally:
        model.lm_head = original
    assert outputs == [" " + expected]
    assert di.prediction_of(outputs[0], record.candidates) == expected
    if eos_bias < 0:
        assert free[0] != outputs[0]  # without the constraint the same logits do not stop at a name


def test_constrained_evaluation_writes_valid_ratio_one_beside_unchanged_metrics(synthetic_dir, tmp_path):
    common = dict(base_model="tiny", dataset=str(synthetic_dir), max_samples=6, batch_size=4)
    plain = inference.evaluate(output_dir=str(tmp_path / "plain"), **common)
    constrained = inference.evaluate(output_dir=str(tmp_path / "constrained"), constrained_decoding=True, **common)
    written = json.loads((tmp_path / "constrained" / inference.METRICS_FILE).read_text())
    assert written["constrained_valid_ratio"] == 1.0 and 0.0 <= written["constrained_hr@1"] <= 1.0
    skip = ("seconds", "constrained_hr@1", "constrained_valid_ratio")
    assert {k: v for k, v in constrained.items() if k not in skip} == {k: v for k, v in plain.items() if k != "seconds"}
    plain_rows, constrained_rows = ([json.loads(line) for line in (tmp_path / name / inference.PREDICTIONS_FILE)
                                     .read_text().splitlines()] for name in ("plain", "constrained"))
    assert written["constrained_hr@1"] == pytest.approx(
        sum(row["constrained_prediction"] == row["target"] for row in constrained_rows) / len(constrained_rows))
    for plain_row, row in zip(plain_rows, constrained_rows):
        assert row["hit"] == (row["prediction"] == row["target"]) and row["valid"] == (row["prediction"] is not None)
        assert row.pop("constrained_output").strip() == row.pop("constrained_prediction")
        assert row == plain_row
    table = results.format_table({"sft": {**written, "seconds": 1.0}, "random": {"hr@1": 0.05, "n": 6}})
    assert "HR@1cons" in table and "Validcons" in table
    assert "HR@1cons" not in results.format_table({"sft": {**plain, "seconds": 1.0}})
