"""Does a trained model read its prompt? Numbers that tell a recommender from an item-popularity prior.

    python prompt_use.py --base_model tiny --resume_from_checkpoint outputs/sft/final_checkpoint \\
        --dataset lastfm --max_samples 1000 --output_dir outputs/prompt_use/sft

For a seeded random sample of test prompts, every candidate c is scored by log p(" c" + EOS | prompt)
(`inference.score_candidates`, the completion log-prob the trainer optimises) twice: with the record's
own history, and with the history of another record of the sample (same candidates, same template).
`metrics.json` holds:

- `candidate_mass`: the mean over prompts of sum_c p(" c" + EOS | prompt), the probability that the
  answer is one of the 20 candidates. A model that picks from the list it was given is near 1; one blind
  to the list gives the candidates only what its item prior gives them (20 / number of items when all
  items are equally likely: 0.0044 on LastFM).
- `rank_hr@1` / `rank_hr@1_other_history`: ranking HR@1 with the own and with the swapped history.
  When they are equal, the ranking does not depend on the user (an item prior at most).
- `history_shift`: the mean |log p(c | own history) - log p(c | other history)| over prompts and
  candidates, in nats; 0 for a model that ignores the history.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Callable, Sequence

import data_interface as di
import runtime

METRICS_FILE = "metrics.json"
Scorer = Callable[[Sequence[str], Sequence[Sequence[str]]], list[list[float]]]


def other_histories(records: Sequence[di.Record], seed: int = 0) -> list[tuple[str, ...]]:
    """For each record, the history of another record of the list (a seeded derangement)."""
    if len(records) < 2:
        raise runtime.UsageError(f"swapping histories needs at least 2 prompts, got {len(records)}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    partner = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # a cycle: nobody gets their own
    return [records[partner[i]].history for i in range(len(records))]


def prompt_use_metrics(score: Scorer, records: Sequence[di.Record], templates: Sequence[str], seed: int = 0) -> dict:
    """The metrics of the module docstring; `score(prompts, candidate lists)` returns log-probs."""
    swapped = [dataclasses.replace(record, history=history)
               for record, history in zip(records, other_histories(records, seed))]
    candidates = [record.candidates for record in records]
    own = score([di.build_prompt(record, templates, seed) for record in records], candidates)
    other = score([di.build_prompt(new, templates, seed, template_of=record) for new, record in zip(swapped, records)],
                  candidates)

    def hr1(scores: list[list[float]]) -> float:
        return di.ranking_metrics([di.rank_of_target(s, r.candidates, r.target) for s, r in zip(scores, records)])[
            "rank_hr@1"]

    shifts = [abs(a - b) for own_row, other_row in zip(own, other) for a, b in zip(own_row, other_row)]
    return {
        "candidate_mass": sum(sum(math.exp(value) for value in row) for row in own) / len(records),
        "rank_hr@1": hr1(own),
        "rank_hr@1_other_history": hr1(other),
        "history_shift": sum(shifts) / len(shifts),
        "n": len(records),
    }


def measure(
    base_model: str = "tiny",
    resume_from_checkpoint: str | None = None,
    dataset: str = "synthetic",
    test_file: str | None = None,
    prompt_path: str | None = None,
    output_dir: str = "outputs/prompt_use",
    overwrite_output_dir: bool = False,
    max_samples: int | None = 1000,
    batch_size: int = 32,
    cutoff_len: int = 512,
    bf16: bool | None = None,
    load_in_4bit: bool | str = "auto",
    seed: int = 0,
) -> dict:
    """Measure how much a model's candidate scores depend on its prompt; writes `output_dir/metrics.json`."""
    import inference

    start = time.time()
    runtime.check_load_in_4bit(load_in_4bit)
    output = runtime.check_output_dir(output_dir, overwrite_output_dir, METRICS_FILE)
    runtime.check_checkpoint(resume_from_checkpoint)
    data = runtime.load_stage_data(("test",), dataset, None, None, test_file, prompt_path)
    records = di.sample_records(data.test, max_samples, seed)
    other_histories(records, seed)  # fails on fewer than 2 prompts before the model loads
    model, tokenizer = inference.load_for_generation(base_model, resume_from_checkpoint, data, seed, load_in_4bit)

    def score(prompts, candidates):
        with runtime.autocast(bf16):
            return inference.score_candidates(model, tokenizer, prompts, candidates, batch_size, cutoff_len)

    metrics = prompt_use_metrics(score, records, data.templates, seed)
    metrics.update(checkpoint=resume_from_checkpoint, seconds=round(time.time() - start, 2))
    runtime.save_json(output / METRICS_FILE, metrics)
    print(f"candidate mass {metrics['candidate_mass']:.4f}  rank HR@1 {metrics['rank_hr@1']:.4f} "
          f"(other history {metrics['rank_hr@1_other_history']:.4f})  history shift {metrics['history_shift']:.3f} nats"
          f"  n {metrics['n']}  ({metrics['seconds']} s) -> {output / METRICS_FILE}")
    return metrics


if __name__ == "__main__":
    runtime.main(measure)
