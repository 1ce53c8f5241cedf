"""SoftmaxDPOTrainer on a tiny random LLaMA with LoRA: it trains, logs, keeps the reference fixed and saves only
the trainable adapter."""

import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from trainer.log_probs import completion_logps
from trainer.softmax_dpo_trainer import SoftmaxDPOCollator, SoftmaxDPOConfig, SoftmaxDPOTrainer

PAD, EOS, VOCAB = 0, 2, 300
NUM_NEGATIVES = 3
BATCH_KEYS = ("prompt_input_ids", "prompt_attention_mask", "completion_input_ids", "completion_attention_mask")
METRICS = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matrices: one thread avoids OpenMP spin-waiting when the (2-core) machine is busy with other jobs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def base_model():
    torch.manual_seed(0)  # same base weights every call
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1,
    )
    return LlamaForCausalLM(config)


def preference_rows(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        prompt = [1] + torch.randint(3, VOCAB, (int(torch.randint(8, 20, (1,), generator=g)),), generator=g).tolist()
        completions = [
            torch.randint(3, VOCAB, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist() + [EOS]
            for _ in range(1 + NUM_NEGATIVES)
        ]
        rows.append({"prompt_input_ids": prompt, "completion_input_ids": completions})
    return rows


@pytest.fixture(scope="module")
def sft_adapter_dir(tmp_path_factory):
    """An "SFT" LoRA adapter with non-zero weights, saved like the SFT stage would."""
    model = get_peft_model(
        base_model(),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"],
                   init_lora_weights=False, modules_to_save=["embed_tokens", "lm_head"]),
    )
    # modules_to_save (as models.py does for the tiny model) start as copies; move them away from the base.
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    path = tmp_path_factory.mktemp("sft")
    model.save_pretrained(path)
    return str(path)


def policy_with_reference(sft_dir):
    model = PeftModel.from_pretrained(base_model(), sft_dir, is_trainable=True)
    model.load_adapter(sft_dir, adapter_name="reference", is_trainable=False)
    return model


def config(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, per_device_eval_batch_size=8,
        learning_rate=1e-2, max_steps=8, logging_steps=4, save_strategy="no", report_to=[], beta=1.0,
        lr_scheduler_type="constant", seed=0, disable_tqdm=True,
    )
    kwargs.update(overrides)
    return SoftmaxDPOConfig(**kwargs)


def policy_and_reference_logps(trainer, rows):
    batch = SoftmaxDPOCollator(PAD)(rows)
    model = trainer.model
    model.eval()
    with torch.no_grad():
        policy = completion_logps(model, *(batch[k] for k in BATCH_KEYS))
        reference = trainer.reference_logps(batch) if trainer.reference_adapter else None
    return policy, reference


def trainable_names(model):
    return sorted(name for name, param in model.named_parameters() if param.requires_grad)


@pytest.mark.parametrize("forward, gradient_checkpointing", [("shared", False), ("concat", False), ("shared", True)])
def test_trains_with_reference_adapter(tmp_path, sft_adapter_dir, forward, gradient_checkpointing):
    rows = preference_rows()
    model = policy_with_reference(sft_adapter_dir)
    trainable_before = trainable_names(model)
    assert trainable_before and all(".default." in name for name in trainable_before)
    trainer = SoftmaxDPOTrainer(
        model=model,
        args=config(tmp_path, forward=forward, activation_checkpointing=gradient_checkpointing),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=rows[:8], pad_token_id=PAD,
    )
    policy_before, reference_before = policy_and_reference_logps(trainer, rows)
    # At the start the policy is the SFT model, i.e. the reference.
    torch.testing.assert_close(policy_before, reference_before, rtol=0, atol=1e-5)
    loss_before = trainer.evaluate(Dataset.from_list(rows))["eval_loss"]

    trainer.train()
    assert trainer.model.get_base_model().model.layers[0].gradient_checkpointing == gradient_checkpointing

    policy_after, reference_after = policy_and_reference_logps(trainer, rows)
    assert torch.equal(reference_before, reference_after)  # the reference never moves
    assert (policy_after - policy_before).abs().max() > 1e-2  # the policy does
    metrics = trainer.evaluate(Dataset.from_list(rows))
    assert metrics["eval_loss"] < loss_before
    for key in METRICS:
        assert f"eval_{key}" in metrics
    train_logs = [log for log in trainer.state.log_history if "loss" in log and "eval_loss" not in log]
    assert train_logs and all(key in train_logs[0] for key in METRICS)
    # Switching adapters for the reference pass must not change what is trainable.
    assert trainable_names(trainer.model) == trainable_before
    assert trainer.model.active_adapter == "default"


def test_trains_with_precomputed_reference(tmp_path, sft_adapter_dir):
    rows = preference_rows()
    model = PeftModel.from_pretrained(base_model(), sft_adapter_dir, is_trainable=True)  # no reference adapter
    # An extra text column, dropped by remove_unused_columns=True while our columns are kept.
    train_dataset = Dataset.from_list([{**row, "target": "item name"} for row in rows])
    trainer = SoftmaxDPOTrainer(
        model=model, args=config(tmp_path, precompute_ref_log_probs=True, remove_unused_columns=True),
        train_dataset=train_dataset,
        eval_dataset=rows[:8], pad_token_id=PAD,
    )
    assert "ref_logps" in trainer.train_dataset.column_names and "ref_logps" in trainer.eval_dataset[0]
    stored = torch.tensor(trainer.train_dataset["ref_logps"])
    assert stored.shape == (16, 1 + NUM_NEGATIVES)
    policy_before, _ = policy_and_reference_logps(trainer, rows)
    torch.testing.assert_close(policy_before, stored, rtol=0, atol=1e-5)  # precomputed with the SFT model
    loss_before = trainer.evaluate()["eval_loss"]

    trainer.train()

    assert torch.equal(torch.tensor(trainer.train_dataset["ref_logps"]), stored)
    policy_after, _ = policy_and_reference_logps(trainer, rows)
    assert (policy_after - policy_before).abs().max() > 1e-2
    assert trainer.evaluate()["eval_loss"] < loss_before


def test_save_model_saves_only_trainable_adapter(tmp_path, sft_adapter_dir):
    model = policy_with_reference(sft_adapter_dir)
    trainer = SoftmaxDPOTrainer(
        model=model, args=config(tmp_path, max_steps=2), train_dataset=preference_rows(8), pad_token_id=PAD
    )
    trainer.train()
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "reference" not in files  # peft would put a second adapter in this sub-folder
    # The saved adapter is the trained one, not the reference.
    reloaded = PeftModel.from_pretrained(base_model(), str(out))
    reloaded.eval()
    trainer.model.eval()
    batch = SoftmaxDPOCollator(PAD)(preference_rows(4, seed=5))
    with torch.no_grad():
        saved = completion_logps(reloaded, *(batch[k] for k in BATCH_KEYS))
        trained = completion_logps(trainer.model, *(batch[k] for k in BATCH_KEYS))
        reference = trainer.reference_logps(batch)
    torch.testing.assert_close(saved, trained, rtol=0, atol=1e-5)
    assert (saved - reference).abs().max() > 1e-3


def test_requires_a_reference(tmp_path, sft_adapter_dir):
    model = PeftModel.from_pretrained(base_model(), sft_adapter_dir, is_trainable=True)
    with pytest.raises(ValueError, match="reference"):
        SoftmaxDPOTrainer(model=model, args=config(tmp_path), train_dataset=preference_rows(4), pad_token_id=PAD)
