"""`--model_name tiny-bpe`: the tiny LLaMA whose item names are ordinary multi-token BPE text."""

from __future__ import annotations

import statistics

import data_interface as di
import models
import runtime


def test_tiny_bpe_spells_item_names_with_several_tokens_and_trains(synthetic_dir, tmp_path):
    import sft

    data = runtime.load_stage_data(("train", "val"), str(synthetic_dir))  # the splits sft.py builds the model from
    tiny = models.load_tokenizer(runtime.base_model_path("tiny", None, data, 0))
    bpe = models.load_tokenizer(runtime.base_model_path("tiny-bpe", None, data, 0))
    names = sorted({name for record in data.val for name in record.candidates})
    prompt = di.build_prompt(data.val[0], data.templates)
    lengths = {label: [len(ids) - 1 for ids in di.encode_completions(tokenizer, prompt,
                                                                   [di.completion_text(n) for n in names])]
               for label, tokenizer in (("tiny", tiny), ("bpe", bpe))}
    assert set(lengths["tiny"]) == {2}  # one token per name, then EOS (the space joins the name token's match)
    assert statistics.mean(lengths["bpe"]) > 2.2 and max(lengths["bpe"]) >= 4  # names alone: 1.2+ tokens, up to 3+
    assert len(bpe) < len(tiny) + len(names)  # no token was added per item
    # Every candidate's answer is " " + the very tokens the name has in the prompt's list: copying is possible.
    prompt_ids = di.encode_prompt(bpe, prompt)
    space = bpe.convert_tokens_to_ids("Ġ")
    for name in data.val[0].candidates:
        answer = di.encode_completion(bpe, prompt, di.completion_text(name))
        assert answer[0] == space and answer[-1] == bpe.eos_token_id
        inner = answer[1:-1]
        assert len(inner) >= 1 and any(prompt_ids[i:i + len(inner)] == inner for i in range(len(prompt_ids))), name
    final = sft.train(model_name="tiny-bpe", dataset=str(synthetic_dir), output_dir=str(tmp_path / "sft"),
                      batch_size=8, max_steps=3, eval_step=3, max_eval_samples=8, full_finetune=True,
                      learning_rate=3e-3)
    assert models.load_tokenizer(final).get_vocab() == bpe.get_vocab()
