"""What SoftmaxDPOTrainer does between the log-probs and the loss, pinned with values that change when it is wired
wrong: beta, which completion is chosen, policy vs reference, the mean over the batch, gradient accumulation, the
logged metrics, ``reference_mode`` and the guard errors.

Most tests use :class:`UnigramLM`, whose next-token distribution is ``softmax(bias)`` at every position: the log-prob
of a completion is a sum of ``log_softmax(bias)`` entries, so loss, gradient and SGD update have a closed form that
shares no code with the trainer."""

import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from trainer.log_probs import completion_logps, pack_prompt_with_completions
from trainer.softmax_dpo_trainer import SoftmaxDPOCollator, SoftmaxDPOConfig, SoftmaxDPOTrainer, reference_mode

PAD, VOCAB = 0, 6
BETA, LEARNING_RATE = 0.5, 0.5
BATCH_KEYS = ("prompt_input_ids", "prompt_attention_mask", "completion_input_ids", "completion_attention_mask")
REFERENCE_BIAS = [0.0, 0.0, 0.3, -0.2, 0.1, 0.0]
POLICY_BIAS = [0.0, 0.0, 1.5, -1.0, 0.4, -0.6]
# Four prompts, each with a chosen and two rejected completions of 1-3 tokens (ids 2..5). Rows differ, and chosen is
# neither the best nor the worst everywhere, so a wrong chosen index, a sum or a swapped sign changes every number.
ROWS = [
    {"prompt_input_ids": [1, 3], "completion_input_ids": [[2, 2], [3], [4, 5, 5]]},
    {"prompt_input_ids": [1], "completion_input_ids": [[4], [2, 3], [5]]},
    {"prompt_input_ids": [1, 4, 4], "completion_input_ids": [[3, 5], [2], [4, 4]]},
    {"prompt_input_ids": [1, 5], "completion_input_ids": [[5, 2, 2], [2, 4], [3, 3]]},
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class UnigramLM(nn.Module):
    """A causal LM that predicts ``softmax(bias)`` at every position whatever the input. It answers the calls
    ``completion_logps`` makes (``logits_to_keep`` as a boolean mask: ``[M, V]``; none: ``[B, L, V]``) and records the
    shape of each call."""

    def __init__(self, bias, attn_implementation="sdpa"):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(bias, dtype=torch.float32))
        self.config = SimpleNamespace(_attn_implementation=attn_implementation, pad_token_id=PAD, use_cache=False)
        self.calls = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=None, **kwargs):
        self.calls.append({"rows": input_ids.shape[0], "mask_dims": attention_mask.dim(),
                           "logits_to_keep": logits_to_keep is not None, "grad": torch.is_grad_enabled()})
        if logits_to_keep is not None:
            shape = (int(logits_to_keep.sum()), VOCAB)
        else:
            shape = (*input_ids.shape, VOCAB)
        return SimpleNamespace(logits=self.bias.expand(shape).contiguous())


def unigram_logps(bias, rows):
    """``[B, K]`` completion log-probs of :class:`UnigramLM` in closed form, float64."""
    log_probs = torch.tensor(bias, dtype=torch.float64).log_softmax(-1)
    return torch.tensor([[float(log_probs[c].sum()) for c in row["completion_input_ids"]] for row in rows],
                        dtype=torch.float64)


def expected_step(policy_bias, reference_bias, rows, beta):
    """Loss, gradient w.r.t. the bias and metrics of one S-DPO step, derived independently of ``sdpo_loss``.

    The S-DPO loss log(1 + sum_j exp(r_j - r_w)) is the cross-entropy of softmax(r) with the chosen (index 0) as the
    class, so d loss / d r_k = softmax(r)_k - [k = 0]; d log pi(c) / d bias = counts(c) - len(c) * softmax(bias).
    """
    rewards = beta * (unigram_logps(policy_bias, rows) - unigram_logps(reference_bias, rows))  # [B, K]
    batch = len(rows)
    loss = F.cross_entropy(rewards, torch.zeros(batch, dtype=torch.long))
    d_rewards = (rewards.softmax(-1) - F.one_hot(torch.zeros(batch, dtype=torch.long), rewards.shape[1])) / batch
    probs = torch.tensor(policy_bias, dtype=torch.float64).softmax(-1)
    gradient = torch.zeros(VOCAB, dtype=torch.float64)
    for b, row in enumerate(rows):
        for k, completion in enumerate(row["completion_input_ids"]):
            d_logp = torch.bincount(torch.tensor(completion), minlength=VOCAB).double() - len(completion) * probs
            gradient += beta * d_rewards[b, k] * d_logp
    chosen, rejected = rewards[:, 0], rewards[:, 1:]
    policy = unigram_logps(policy_bias, rows)
    metrics = {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/accuracies": (chosen > rejected.max(dim=1).values).double().mean().item(),
        "rewards/margins": (chosen - rejected.mean(dim=1)).mean().item(),
        "logps/chosen": policy[:, 0].mean().item(),
        "logps/rejected": policy[:, 1:].mean().item(),
    }
    return loss.item(), gradient, metrics


def sgd_config(tmp_path, **overrides):
    """Plain SGD, constant rate, no clipping or weight decay: one step moves the bias by exactly -lr * gradient."""
    kwargs = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, per_device_eval_batch_size=4,
        gradient_accumulation_steps=1, learning_rate=LEARNING_RATE, optim="sgd", weight_decay=0.0,
        max_grad_norm=0.0, lr_scheduler_type="constant", warmup_steps=0, max_steps=2, logging_steps=1,
        save_strategy="no", report_to=[], beta=BETA, precompute_ref_log_probs=True, seed=0, disable_tqdm=True,
        use_cpu=True,
    )
    kwargs.update(overrides)
    return SoftmaxDPOConfig(**kwargs)


def unigram_trainer(tmp_path, **overrides):
    """Reference log-probs are precomputed from REFERENCE_BIAS at construction; the policy then moves to POLICY_BIAS."""
    model = UnigramLM(REFERENCE_BIAS)
    trainer = SoftmaxDPOTrainer(model=model, args=sgd_config(tmp_path, **overrides), train_dataset=list(ROWS),
                                eval_dataset=list(ROWS), pad_token_id=PAD)
    with torch.no_grad():
        model.bias.copy_(torch.tensor(POLICY_BIAS))
    return trainer, model


def test_expected_values_tell_the_wirings_apart():
    """The closed form itself would catch each mis-wiring: the alternatives give clearly different numbers."""
    loss, _, metrics = expected_step(POLICY_BIAS, REFERENCE_BIAS, ROWS, BETA)
    assert abs(expected_step(POLICY_BIAS, REFERENCE_BIAS, ROWS, 1.0)[0] - loss) > 0.05  # beta ignored
    assert abs(expected_step(REFERENCE_BIAS, POLICY_BIAS, ROWS, BETA)[0] - loss) > 0.05  # policy <-> reference
    swapped = [{**row, "completion_input_ids": row["completion_input_ids"][::-1]} for row in ROWS]
    assert abs(expected_step(POLICY_BIAS, REFERENCE_BIAS, swapped, BETA)[0] - loss) > 0.05  # another chosen
    assert 0 < metrics["rewards/accuracies"] < 1
    rewards = BETA * (unigram_logps(POLICY_BIAS, ROWS) - unigram_logps(REFERENCE_BIAS, ROWS))
    beats_some = (rewards[:, :1] > rewards[:, 1:]).any(dim=1).double().mean().item()
    assert beats_some != metrics["rewards/accuracies"]  # "above every negative" differs from "above one"


def test_precomputed_reference_is_the_model_at_construction(tmp_path):
    trainer, _ = unigram_trainer(tmp_path)
    stored = torch.tensor([row["ref_logps"] for row in trainer.train_dataset], dtype=torch.float64)
    torch.testing.assert_close(stored, unigram_logps(REFERENCE_BIAS, ROWS), rtol=0, atol=1e-5)
    assert [row["ref_logps"] for row in trainer.eval_dataset] == [row["ref_logps"] for row in trainer.train_dataset]


def test_eval_loss_and_metrics_equal_the_closed_form(tmp_path):
    trainer, _ = unigram_trainer(tmp_path)
    loss, _, metrics = expected_step(POLICY_BIAS, REFERENCE_BIAS, ROWS, BETA)
    logged = trainer.evaluate()
    assert logged["eval_loss"] == pytest.approx(loss, abs=1e-5)
    for key, value in metrics.items():
        assert logged[f"eval_{key}"] == pytest.approx(value, abs=1e-5), key
    assert not any(key in logged for key in metrics)  # eval metrics carry the eval_ prefix only


def test_compute_loss_returns_the_mean_loss_and_both_log_probs(tmp_path):
    trainer, model = unigram_trainer(tmp_path)
    batch = SoftmaxDPOCollator(PAD)(list(trainer.train_dataset))
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    assert loss.shape == () and loss.item() == pytest.approx(expected_step(POLICY_BIAS, REFERENCE_BIAS, ROWS, BETA)[0],
                                                             abs=1e-5)
    torch.testing.assert_close(outputs["policy_logps"].double(), unigram_logps(POLICY_BIAS, ROWS), rtol=0, atol=1e-5)
    torch.testing.assert_close(outputs["ref_logps"].double(), unigram_logps(REFERENCE_BIAS, ROWS), rtol=0, atol=1e-5)
    assert not outputs["policy_logps"].requires_grad


def test_reference_log_probs_take_the_policy_dtype(tmp_path):
    """Reference log-probs handed over in float64 are cast to the policy's float32: the loss and the returned
    ``ref_logps`` stay float32 (without the cast, type promotion would make both float64)."""
    trainer, model = unigram_trainer(tmp_path)
    batch = SoftmaxDPOCollator(PAD)(list(trainer.train_dataset))
    batch["ref_logps"] = batch["ref_logps"].double()
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    assert loss.dtype == torch.float32 and outputs["ref_logps"].dtype == torch.float32
    assert loss.item() == pytest.approx(expected_step(POLICY_BIAS, REFERENCE_BIAS, ROWS, BETA)[0], abs=1e-5)


@pytest.mark.parametrize("batch_size, accumulation", [(4, 1), (1, 4), (2, 2)])
def test_sgd_steps_move_the_bias_by_the_closed_form_gradient(tmp_path, batch_size, accumulation):
    """Two optimizer steps over the same 4 rows, as 1 x 4, 4 x 1 or 2 x 2 (accumulation x batch): the same loss,
    metrics and update, each equal to the closed form (so a loss summed over rows, a beta ignored, a swapped reference
    or a gradient not divided, or divided twice, by the accumulation steps all fail)."""
    trainer, model = unigram_trainer(tmp_path, per_device_train_batch_size=batch_size,
                                     gradient_accumulation_steps=accumulation)
    trainer.train()
    bias = torch.tensor(POLICY_BIAS, dtype=torch.float64)
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["step"] for log in logs] == [1, 2]
    for log in logs:
        loss, gradient, metrics = expected_step(bias.tolist(), REFERENCE_BIAS, ROWS, BETA)
        assert log["loss"] == pytest.approx(loss, abs=1e-5)
        for key, value in metrics.items():  # this step's metrics only: the previous step's were cleared
            assert log[key] == pytest.approx(value, abs=1e-5), key
        bias = bias - LEARNING_RATE * gradient
    torch.testing.assert_close(model.bias.detach().double(), bias, rtol=0, atol=1e-5)


@pytest.mark.parametrize("forward", ["shared", "concat"])
def test_every_model_call_scores_all_completions_in_the_chosen_layout(tmp_path, forward):
    trainer, model = unigram_trainer(tmp_path, forward=forward, max_steps=1)
    model.calls.clear()
    trainer.train()
    # Shared: one packed row per prompt, a 4-D mask and logits only where needed; concat: 1 + N rows per prompt.
    rows_per_prompt, mask_dims = (1, 4) if forward == "shared" else (3, 2)
    assert model.calls == [{"rows": 4 * rows_per_prompt, "mask_dims": mask_dims,
                            "logits_to_keep": forward == "shared", "grad": True}]


def test_completion_logps_looks_through_wrappers_for_the_config():
    class Wrapper(nn.Module):  # as DDP: no config of its own, the model in .module
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kwargs):
            return self.module(**kwargs)

    batch = SoftmaxDPOCollator(PAD)(ROWS)
    logps = completion_logps(Wrapper(Wrapper(UnigramLM(POLICY_BIAS, "eager"))), *(batch[k] for k in BATCH_KEYS))
    torch.testing.assert_close(logps.double(), unigram_logps(POLICY_BIAS, ROWS), rtol=0, atol=1e-5)


# ---- the reference adapter ------------------------------------------------------------------------------------------


def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=PAD)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    torch.manual_seed(1)
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                                    target_modules=["q_proj", "v_proj", "up_proj"]))
    path = tmp_path_factory.mktemp("sft")
    model.save_pretrained(path)
    return str(path)


def policy_and_reference(sft_dir, reference_trainable=False):
    """The policy starts from the SFT adapter and is then moved away from it, so policy != reference."""
    model = PeftModel.from_pretrained(tiny_llama(), sft_dir, is_trainable=True)
    model.load_adapter(sft_dir, adapter_name="reference", is_trainable=reference_trainable)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".default." in name:
                param.add_(0.3 * torch.randn_like(param))
    return model


def adapter_config(tmp_path, **overrides):
    return sgd_config(tmp_path, precompute_ref_log_probs=False, **overrides)


def trainable(model):
    return {name: param.requires_grad for name, param in model.named_parameters()}


def test_reference_adapter_loss_and_gradient_equal_an_independent_computation(tmp_path, sft_dir):
    model = policy_and_reference(sft_dir)
    trainer = SoftmaxDPOTrainer(model=model, args=adapter_config(tmp_path), train_dataset=ROWS, pad_token_id=PAD)
    batch = SoftmaxDPOCollator(PAD)(ROWS)
    inputs = [batch[k] for k in BATCH_KEYS]
    reference_model = PeftModel.from_pretrained(tiny_llama(), sft_dir).eval()  # the SFT model, on its own
    with torch.no_grad():
        reference = completion_logps(reference_model, *inputs)
    model.train()
    policy = completion_logps(model, *inputs)
    assert (policy - reference).abs().max() > 0.05
    rewards = BETA * (policy - reference)
    expected = F.cross_entropy(rewards, torch.zeros(len(ROWS), dtype=torch.long))
    expected.backward()
    expected_grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    model.zero_grad(set_to_none=True)
    before = trainable(model)

    loss = trainer.compute_loss(model, batch)
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    grads = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
    assert grads.keys() == expected_grads.keys() and all(".default." in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert trainable(model) == before and model.active_adapter == "default" and model.training


def test_a_reference_adapter_loaded_trainable_is_frozen(tmp_path, sft_dir):
    model = policy_and_reference(sft_dir, reference_trainable=True)
    assert any(flag for name, flag in trainable(model).items() if ".reference." in name) or True
    SoftmaxDPOTrainer(model=model, args=adapter_config(tmp_path), train_dataset=ROWS, pad_token_id=PAD)
    flags = trainable(model)
    assert not any(flag for name, flag in flags.items() if ".reference." in name)
    assert any(flag for name, flag in flags.items() if ".default." in name)


def test_reference_mode_switches_the_adapter_and_restores_everything(sft_dir):
    model = policy_and_reference(sft_dir)
    frozen = next(name for name in trainable(model) if ".default." in name)
    model.get_parameter(frozen).requires_grad_(False)  # a pattern set_adapter("default") would not restore
    model.train()
    before = trainable(model)
    with reference_mode(model, "reference"):
        assert model.active_adapter == "reference"
        assert not model.training and not torch.is_grad_enabled()
    assert trainable(model) == before and model.active_adapter == "default"
    assert model.training and torch.is_grad_enabled()

    model.eval()
    with reference_mode(model, None):
        assert model.active_adapter == "default" and not torch.is_grad_enabled()
    assert not model.training and trainable(model) == before


def test_reference_mode_restores_everything_when_the_body_raises(sft_dir):
    model = policy_and_reference(sft_dir)
    model.train()
    before = trainable(model)
    with pytest.raises(RuntimeError, match="body failed"):
        with reference_mode(model, "reference"):
            raise RuntimeError("body failed")
    assert trainable(model) == before and model.active_adapter == "default"
    assert model.training and torch.is_grad_enabled()
    # An adapter that does not exist fails on entry, and leaves the model as it was.
    with pytest.raises(ValueError, match="missing"):
        with reference_mode(model, "missing"):
            pass
    assert trainable(model) == before and model.active_adapter == "default" and model.training


# ---- guard errors ---------------------------------------------------------------------------------------------------


def test_collator_refuses_unequal_completion_counts_and_empty_prompts():
    collate = SoftmaxDPOCollator(PAD)
    with pytest.raises(ValueError, match=r"same number of completions, got \[2, 3\]"):
        collate([ROWS[0], {**ROWS[1], "completion_input_ids": [[4], [5]]}])
    with pytest.raises(ValueError, match="Empty prompt"):
        collate([ROWS[0], {**ROWS[1], "prompt_input_ids": []}])
    # ref_logps only when every row has them
    assert "ref_logps" not in collate([{**ROWS[0], "ref_logps": [0.0, 0.0, 0.0]}, ROWS[1]])
    both = collate([{**ROWS[0], "ref_logps": [-1.0, -2.0, -3.0]}, {**ROWS[1], "ref_logps": [-4.0, -5.0, -6.0]}])
    assert both["ref_logps"].dtype == torch.float32 and both["ref_logps"].tolist() == [[-1, -2, -3], [-4, -5, -6]]


def test_an_empty_completion_or_prompt_is_refused_by_the_packer():
    batch = SoftmaxDPOCollator(PAD)([{**ROWS[0], "completion_input_ids": [[2], [], [3]]}, ROWS[1]])
    with pytest.raises(ValueError, match="every prompt and every completion needs at least one token"):
        completion_logps(UnigramLM(POLICY_BIAS), *(batch[k] for k in BATCH_KEYS))
    batch = SoftmaxDPOCollator(PAD)(ROWS[:2])
    with pytest.raises(ValueError, match="every prompt and every completion needs at least one token"):
        pack_prompt_with_completions(batch["prompt_input_ids"], torch.zeros_like(batch["prompt_attention_mask"]),
                                     batch["completion_input_ids"], batch["completion_attention_mask"])


def test_unsupported_attention_and_forward_modes_are_refused():
    batch = [SoftmaxDPOCollator(PAD)(ROWS)[k] for k in BATCH_KEYS]
    with pytest.raises(NotImplementedError, match=r"attn_implementation in \('eager', 'sdpa'\); the model uses "
                                                  r"'flash_attention_2'"):
        completion_logps(UnigramLM(POLICY_BIAS, "flash_attention_2"), *batch)
    # concat passes an ordinary 2-D mask, which every attention implementation takes
    concat = completion_logps(UnigramLM(POLICY_BIAS, "flash_attention_2"), *batch, forward="concat")
    torch.testing.assert_close(concat.double(), unigram_logps(POLICY_BIAS, ROWS), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"forward must be one of \('shared', 'concat'\), got 'packed'"):
        completion_logps(UnigramLM(POLICY_BIAS), *batch, forward="packed")


def test_config_refuses_a_bad_beta_or_forward(tmp_path):
    for beta in (0.0, -0.5):
        with pytest.raises(ValueError, match=f"beta must be positive, got {beta}"):
            SoftmaxDPOConfig(output_dir=str(tmp_path), beta=beta)
    with pytest.raises(ValueError, match=r"forward must be one of \('shared', 'concat'\), got 'packed'"):
        SoftmaxDPOConfig(output_dir=str(tmp_path), forward="packed")
    assert SoftmaxDPOConfig(output_dir=str(tmp_path), beta=1e-3).beta == 1e-3


def test_trainer_refuses_a_missing_reference_or_pad_id_and_a_bad_config(tmp_path, sft_dir):
    with pytest.raises(TypeError, match="args must be a SoftmaxDPOConfig"):
        SoftmaxDPOTrainer(model=UnigramLM(POLICY_BIAS), args=object(), train_dataset=ROWS, pad_token_id=PAD)
    no_pad = UnigramLM(POLICY_BIAS)
    no_pad.config.pad_token_id = None
    with pytest.raises(ValueError, match="Pass pad_token_id"):
        SoftmaxDPOTrainer(model=no_pad, args=sgd_config(tmp_path), train_dataset=ROWS)
    with pytest.raises(ValueError, match=r"needs the reference \(SFT\) model's log-probs"):
        SoftmaxDPOTrainer(model=UnigramLM(POLICY_BIAS), args=adapter_config(tmp_path), train_dataset=ROWS,
                          pad_token_id=PAD)
    model = policy_and_reference(sft_dir)
    model.set_adapter("reference")
    with pytest.raises(ValueError, match="The active adapter is the reference adapter 'reference'"):
        SoftmaxDPOTrainer(model=model, args=adapter_config(tmp_path), train_dataset=ROWS, pad_token_id=PAD)


def test_no_reference_log_probs_once_training_started_or_for_a_batch_without_them(tmp_path):
    trainer, model = unigram_trainer(tmp_path)
    # The whole message, so that it still names both ways out (precompute, or load a reference adapter).
    message = ("The batch has no 'ref_logps' and the model has no reference adapter: precompute the reference "
               "log-probs of this dataset (trainer.add_reference_logps) or load a reference adapter.")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        trainer.compute_loss(model, SoftmaxDPOCollator(PAD)(ROWS))  # rows without the precomputed column
    trainer.state.global_step = 1
    with pytest.raises(ValueError, match="after training started without a reference adapter"):
        trainer.add_reference_logps(ROWS)
