"""trl's fused LM head on a CPU, made to project only labelled positions (trainer/compact_lm_head.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import trl.kernels.chunked_logprob as trl_kernel
import trl.trainer.utils as trl_utils
from transformers import LlamaConfig, LlamaForCausalLM

from trainer.compact_lm_head import compact_lm_head_on_cpu


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)
    return LlamaForCausalLM(config)


def _batch():
    """Three right-padded rows: a prompt, then a labelled completion of 2-4 tokens, then padding."""
    g = torch.Generator().manual_seed(1)
    prompts, completions = (9, 13, 6), (3, 2, 4)
    width = max(p + c for p, c in zip(prompts, completions))
    input_ids = torch.zeros(3, width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        input_ids[row, :p + c] = torch.randint(1, 97, (p + c,), generator=g)
        attention_mask[row, :p + c] = 1
        labels[row, p:p + c] = input_ids[row, p:p + c]
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def _fused_loss(model, batch, monkeypatch, use_triton) -> tuple[dict, int]:
    """Loss, per-token outputs and gradients through trl's fused head, and the rows it projected."""
    projected = []
    real = trl_utils._ChunkedLogProbFunction

    def apply(hidden, *args):
        projected.append(hidden.shape[0])
        return real.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", SimpleNamespace(apply=apply))
    monkeypatch.setattr(trl_utils, "_use_triton", use_triton)
    model.zero_grad(set_to_none=True)
    out = model(**batch, fused_lm_head=True)
    out.loss.backward()
    result = {"loss": out.loss.detach(), "log_probs": out.log_probs.detach(), "entropy": out.entropy.detach(),
              "is_top1": out.is_top1.detach(),
              "grads": {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}}
    return result, sum(projected)


def test_only_labelled_positions_are_projected_and_loss_gradients_metrics_are_unchanged(monkeypatch):
    batch = _batch()
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    every = batch["labels"].shape[0] * (batch["labels"].shape[1] - 1)
    model = _model()
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    full, full_rows = _fused_loss(model, batch, monkeypatch, trl_kernel._use_triton)  # trl's own CPU choice

    monkeypatch.setattr(trl_utils, "_use_triton", trl_kernel._use_triton)
    compact_lm_head_on_cpu()
    compact_choice = trl_utils._use_triton
    assert compact_choice(torch.device("cpu")) and not trl_kernel._use_triton(torch.device("cpu"))
    compact, compact_rows = _fused_loss(model, batch, monkeypatch, compact_choice)

    assert (full_rows, compact_rows) == (every, labelled) and labelled < every // 3
    torch.testing.assert_close(compact["loss"], full["loss"], rtol=1e-6, atol=1e-6)
    for key in ("log_probs", "entropy", "is_top1"):
        torch.testing.assert_close(compact[key], full[key], rtol=1e-5, atol=1e-6)
    assert compact["grads"].keys() == full["grads"].keys() and "lm_head.weight" in full["grads"]
    for name, grad in full["grads"].items():
        torch.testing.assert_close(compact["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_applying_it_twice_wraps_once_and_other_devices_keep_trls_choice(monkeypatch):
    seen = []

    def trls_choice(device):
        seen.append(device.type)
        return device.type == "cuda"

    monkeypatch.setattr(trl_utils, "_use_triton", trls_choice)
    compact_lm_head_on_cpu()
    once = trl_utils._use_triton
    compact_lm_head_on_cpu()
    assert trl_utils._use_triton is once
    assert once(torch.device("cpu")) and seen == []  # CPU decided without asking trl
    assert once(torch.device("cuda")) and not once(torch.device("meta")) and seen == ["cuda", "meta"]


def test_a_trl_without_the_choice_is_a_clear_error(monkeypatch):
    monkeypatch.delattr(trl_utils, "_use_triton")
    with pytest.raises(RuntimeError, match=r"trl\.trainer\.utils\._use_triton is gone"):
        compact_lm_head_on_cpu()


def test_the_sft_stage_projects_only_labelled_positions_with_the_same_losses(synthetic_dir, tmp_path, monkeypatch):
    """Two SFT steps of the stage script on the synthetic data, with trl's CPU choice and with the stage's: the
    head projects the completions' positions only, and the logged train and eval losses are the same."""
    import sft
    import trainer.compact_lm_head

    real = trl_utils._ChunkedLogProbFunction

    def run(name: str, compact: bool) -> tuple[list[int], list[dict]]:
        rows = []

        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return real.apply(hidden, *args)

        monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", SimpleNamespace(apply=apply))
        monkeypatch.setattr(trl_utils, "_use_triton", trl_kernel._use_triton)  # as a fresh process starts
        if not compact:
            monkeypatch.setattr(trainer.compact_lm_head, "compact_lm_head_on_cpu", lambda: None)
        sft.train(dataset=str(synthetic_dir), output_dir=str(tmp_path / name), batch_size=4, max_steps=2,
                  eval_step=1, max_eval_samples=4)
        monkeypatch.undo()
        history = json.loads((tmp_path / name / "log_history.json").read_text())["log_history"]
        return rows, [{k: v for k, v in entry.items() if "loss" in k} for entry in history]

    every, full_losses = run("full", compact=False)
    labelled, compact_losses = run("compact", compact=True)
    assert len(every) == len(labelled) > 0
    assert all(rows * 5 < whole for rows, whole in zip(labelled, every)), (labelled, every)
    assert len(compact_losses) == len(full_losses) and any(compact_losses)
    for compact, full in zip(compact_losses, full_losses):
        assert compact.keys() == full.keys()
        for key in full:
            assert compact[key] == pytest.approx(full[key], rel=1e-5), key
