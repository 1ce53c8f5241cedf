"""The shared-prompt (packed) forward gives the same completion log-probs and gradients as the concat forward."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from trainer.log_probs import completion_logps, pack_prompt_with_completions
from trainer.softmax_dpo_trainer import SoftmaxDPOCollator

PAD = 0
VOCAB = 300


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matrices: one thread avoids OpenMP spin-waiting when the (2-core) machine is busy with other jobs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama(attn_implementation="sdpa", seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=PAD,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config)


def random_rows(prompt_lengths=(9, 15, 4), num_completions=4, seed=1):
    """Prompts of different lengths and K completions of 1-5 tokens each (different lengths)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for length in prompt_lengths:
        rows.append(
            {
                "prompt_input_ids": torch.randint(1, VOCAB, (length,), generator=g).tolist(),
                "completion_input_ids": [
                    torch.randint(1, VOCAB, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                    for _ in range(num_completions)
                ],
            }
        )
    return rows


def batch_of(rows):
    batch = SoftmaxDPOCollator(PAD)(rows)
    return [batch[k] for k in ("prompt_input_ids", "prompt_attention_mask", "completion_input_ids", "completion_attention_mask")]


def one_by_one_logps(model, rows):
    """Ground truth without padding or custom masks: each prompt+completion alone through the model."""
    out = torch.zeros(len(rows), len(rows[0]["completion_input_ids"]))
    for b, row in enumerate(rows):
        prompt = row["prompt_input_ids"]
        for k, completion in enumerate(row["completion_input_ids"]):
            logits = model(torch.tensor([prompt + completion])).logits[0].log_softmax(-1)
            out[b, k] = sum(logits[len(prompt) - 1 + t, tok] for t, tok in enumerate(completion))
    return out


def test_collator_padding():
    rows = [
        {"prompt_input_ids": [5, 6, 7], "completion_input_ids": [[8, 2], [9], [10, 11, 2]], "extra": "ignored"},
        {"prompt_input_ids": [5], "completion_input_ids": [[12], [13, 2], [14]]},
    ]
    batch = SoftmaxDPOCollator(PAD)(rows)
    assert batch["prompt_input_ids"].tolist() == [[5, 6, 7], [0, 0, 5]]
    assert batch["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["completion_input_ids"].tolist() == [[[8, 2, 0], [9, 0, 0], [10, 11, 2]], [[12, 0, 0], [13, 2, 0], [14, 0, 0]]]
    assert batch["completion_attention_mask"][0].tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    assert "extra" not in batch and "ref_logps" not in batch


def test_packed_layout():
    # Row 0: prompt of 2 real tokens (1 left pad); completions of 2 and 1 tokens -> packed back to back, 1 trailing pad.
    # Row 1: prompt of 3 tokens; completions of 2 and 1 tokens -> 6 tokens, no padding.
    packed = pack_prompt_with_completions(
        torch.tensor([[0, 11, 12], [13, 14, 15]]),
        torch.tensor([[0, 1, 1], [1, 1, 1]]),
        torch.tensor([[[21, 22], [23, 0]], [[24, 0], [25, 26]]]),
        torch.tensor([[[1, 1], [1, 0]], [[1, 0], [1, 1]]]),
    )
    assert packed["input_ids"].tolist() == [[11, 12, 21, 22, 23, 0], [13, 14, 15, 24, 25, 26]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0], [0, 1, 2, 3, 3, 4]]
    assert packed["segment"].tolist() == [[-1, -1, 0, 0, 1, -2], [-1, -1, -1, 0, 1, 1]]
    assert packed["is_prompt_end"].int().tolist() == [[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]]
    assert packed["is_last"].int().tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 1]]
    mask = packed["attention_mask"]
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # completion 0 sees the prompt and itself causally
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # completion 1 does not see completion 0
        [1, 1, 0, 0, 0, 1],  # trailing pad: the prompt and itself (never read)
    ]
    assert mask[1, 0, 5].int().tolist() == [1, 1, 1, 0, 1, 1]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_shared_equals_concat_equals_one_by_one(attn_implementation):
    model = tiny_llama(attn_implementation).eval()
    rows = random_rows()
    batch = batch_of(rows)
    with torch.no_grad():
        shared = completion_logps(model, *batch, forward="shared")
        concat = completion_logps(model, *batch, forward="concat")
        reference = one_by_one_logps(model, rows)
    assert shared.shape == (3, 4)
    torch.testing.assert_close(shared, concat, rtol=0, atol=1e-5)
    torch.testing.assert_close(shared, reference, rtol=0, atol=1e-5)


def lora_model(attn_implementation="sdpa"):
    model = tiny_llama(attn_implementation)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
        init_lora_weights=False,  # non-zero B so the adapter changes the log-probs
    )
    return get_peft_model(model, config)


def grads_of_loss(model, batch, forward):
    model.zero_grad(set_to_none=True)
    logps = completion_logps(model, *batch, forward=forward)
    # Any loss mixing all completions; weights differ per completion so every one matters.
    weights = torch.linspace(-1.0, 1.0, logps.shape[1])
    (logps * weights).sum().backward()
    return logps.detach(), {
        name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad
    }


@pytest.mark.parametrize(
    "attn_implementation, gradient_checkpointing", [("sdpa", False), ("sdpa", True), ("eager", True)]
)
def test_lora_values_and_gradients_match(attn_implementation, gradient_checkpointing):
    model = lora_model(attn_implementation)
    if gradient_checkpointing:
        model.activation_checkpointing_enable()  # reaches the base model through the peft wrapper
        assert model.get_base_model().model.layers[0].gradient_checkpointing
    model.train()  # checkpointing is only active in train mode; lora_dropout is 0 so train mode is deterministic
    batch = batch_of(random_rows(prompt_lengths=(12, 5, 8, 3), num_completions=3, seed=2))
    shared, shared_grads = grads_of_loss(model, batch, "shared")
    concat, concat_grads = grads_of_loss(model, batch, "concat")
    torch.testing.assert_close(shared, concat, rtol=0, atol=1e-5)
    assert shared_grads.keys() == concat_grads.keys() and len(shared_grads) > 0
    assert all("lora_" in name for name in shared_grads)
    for name in shared_grads:
        assert shared_grads[name].abs().sum() > 0, name
        torch.testing.assert_close(shared_grads[name], concat_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_padding_does_not_change_logps():
    # The same row alone and in a batch with longer prompts/completions gets the same log-probs.
    model = tiny_llama().eval()
    rows = random_rows(prompt_lengths=(6, 20), num_completions=3, seed=3)
    with torch.no_grad():
        together = completion_logps(model, *batch_of(rows))
        alone = completion_logps(model, *batch_of(rows[:1]))
    torch.testing.assert_close(together[:1], alone, rtol=0, atol=1e-5)
