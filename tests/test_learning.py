"""Training learns: on synthetic data, whose best achievable HR@1 is known, SFT lifts candidate ranking.

Generation-based HR@1 needs a model that has learned to name candidates, which the tiny model does
not reach in a test's budget; ranking the 20 candidates by their completion log-probs measures what
the model learned about the user, with the same log-prob function the S-DPO trainer uses.
"""

from __future__ import annotations

import json

import torch

import data_interface as di
import inference
import runtime
import sft
from data import synthetic
from trainer import SoftmaxDPOCollator, completion_logps


def ranking_hit_ratio(model, tokenizer, records, templates) -> float:
    """HR@1 of choosing the candidate with the highest log-prob as completion of the record's prompt."""
    rows = []
    for record in records:
        completions = [di.completion_text(name) for name in record.candidates]
        row = {"prompt": di.build_prompt(record, templates), "chosen": completions[0], "rejected": completions[1:]}
        rows.append(di.tokenize_preference_row(tokenizer, row))
    collate = SoftmaxDPOCollator(tokenizer.pad_token_id)
    hits = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), 10):
            batch = collate(rows[start:start + 10])
            logps = completion_logps(model, batch["prompt_input_ids"], batch["prompt_attention_mask"],
                                     batch["completion_input_ids"], batch["completion_attention_mask"])
            for record, best in zip(records[start:start + 10], logps.argmax(dim=1).tolist()):
                hits += record.candidates[best] == record.target
    return hits / len(records)


def test_sft_on_synthetic_data_learns_to_rank_the_true_item(tmp_path):
    folder = tmp_path / "synthetic"
    stats = synthetic.generate(folder, seed=1)
    final = sft.train(model_name="tiny", dataset=str(folder), output_dir=str(tmp_path / "sft"), batch_size=16,
                      max_steps=150, eval_step=150, learning_rate=1e-2, max_eval_samples=16)
    data = runtime.load_stage_data(("test",), str(folder))
    records = data.test[:150]
    trained, tokenizer = inference.load_for_generation("tiny", final, data, seed=0)
    untrained = inference.models.load_base_model(runtime.base_model_path("tiny", final, data, seed=0))
    random_hr = 1 / 20
    trained_hr = ranking_hit_ratio(trained, tokenizer, records, data.templates)
    untrained_hr = ranking_hit_ratio(untrained, tokenizer, records, data.templates)
    best_hr = stats["best_hr@1"]["test"]
    assert trained_hr > 2 * random_hr and trained_hr > untrained_hr + 0.05
    assert trained_hr <= best_hr + 0.1  # no model beats the generating process's oracle (beyond sampling noise)
