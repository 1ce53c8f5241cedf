"""Greedy decoding restricted to a prompt's candidate names: a prefix tree over their token ids.

Each candidate's completion is tokenized exactly as training and ranking tokenize it: " " + name split
off the jointly tokenized prompt + completion, then EOS (`data_interface.encode_completions`), so a name
that tokenizes differently after a space is constrained to its after-the-cue ids. At each decoding step,
transformers' `PrefixConstrainedLogitsProcessor` (the `prefix_allowed_tokens_fn` argument of
`generate`) sets every token to -inf except those that continue some candidate's sequence from what
the row has generated so far. Every sequence ends with EOS, so decoding stops exactly at the end of one
name, also when one name's tokens are a prefix of another's ("Muse" / "Muse Band": after " Muse" both
EOS and " Band" are allowed and greedy takes the likelier).

    trees = candidate_trees(tokenizer, prompts, [record.candidates for record in records])
    model.generate(..., **generate_constraint([trees[i] for i in batch], prompt_width))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import data_interface as di

METRIC_PREFIX = "constrained_"  # metrics.json keys of the constrained outputs: constrained_hr@1, ...


@dataclass
class _Node:
    children: dict[int, "_Node"] = field(default_factory=dict)
    name: str | None = None  # set on the node reached by a whole sequence (its last token is EOS)


class CandidateTree:
    """The token-id sequences of one prompt's candidate completions (each ending with EOS) as a prefix tree."""

    def __init__(self, names: Sequence[str], sequences: Sequence[Sequence[int]], eos_token_id: int):
        if not sequences:
            raise ValueError("a candidate tree needs at least one candidate")
        self.root = _Node()
        self.eos_token_id = eos_token_id
        self.longest = max(len(ids) for ids in sequences)  # tokens needed to finish any candidate
        for name, ids in zip(names, sequences):
            if not ids or ids[-1] != eos_token_id:
                raise ValueError(f"the token ids of candidate {name!r} do not end with EOS")
            node = self.root
            for token in ids:
                node = node.children.setdefault(token, _Node())
            node.name = name

    def allowed_tokens(self, generated: Sequence[int]) -> list[int]:
        """The tokens that may follow `generated` (the ids decoded so far after the prompt).

        A finished row (it produced a candidate's EOS; `generate` pads it from then on) gets [EOS]: the
        logits processor needs a non-empty list, and the token is replaced by padding anyway.
        """
        node = self.root
        for token in generated:
            if not node.children:  # a whole candidate, EOS included, is already out
                break
            node = node.children.get(token)
            if node is None:
                raise ValueError(f"generated ids {list(generated)} left the candidates' prefix tree")
        return list(node.children) or [self.eos_token_id]

    def name_of(self, generated: Sequence[int]) -> str | None:
        """The candidate whose whole sequence (EOS included) starts `generated`, or None."""
        node = self.root
        for token in generated:
            node = node.children.get(token)
            if node is None:
                return None
            if node.name is not None:
                return node.name
        return None


def candidate_trees(tokenizer, prompts: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[CandidateTree]:
    """One prefix tree per prompt over its candidates' completion ids, as training tokenizes them."""
    return [CandidateTree(names, di.encode_completions(tokenizer, prompt, [di.completion_text(n) for n in names]),
                          tokenizer.eos_token_id)
            for prompt, names in zip(prompts, candidates)]


def generate_constraint(trees: Sequence[CandidateTree], prompt_width: int) -> dict:
    """Keyword arguments of `model.generate` that restrict row i of a batch to `trees[i]`.

    `prompt_width`: the (left-padded) width of the batch's input_ids; the processor is given each row's
    whole sequence, prompt included. `max_new_tokens` is the batch's longest candidate sequence, so every
    row can finish its name (the unconstrained limit of 20 tokens would cut longer names).
    """

    def allowed(batch_id: int, input_ids) -> list[int]:
        return trees[batch_id].allowed_tokens(input_ids[prompt_width:].tolist())

    return {"prefix_allowed_tokens_fn": allowed, "max_new_tokens": max(tree.longest for tree in trees)}


def constrained_metrics(predictions: Sequence[str | None], targets: Sequence[str]) -> dict:
    """`constrained_hr@1` and `constrained_valid_ratio`: the generation metrics (same counting rule as
    the unconstrained `hr@1` / `valid_ratio`) of the constrained outputs' predictions."""
    metrics = di.recommendation_metrics(predictions, targets)
    return {METRIC_PREFIX + key: metrics[key] for key in ("hr@1", "valid_ratio")}
