"""The 4-bit NF4 path (bitsandbytes) on a CPU: quantization settings, loading for training vs generation."""

from __future__ import annotations

import pytest
import torch

import models
import runtime


def test_double_quantization_is_off_by_default_as_in_the_original():
    config = models.quantization_config_for("cuda")
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is False
    assert models.quantization_config_for("cuda", double_quant=True).bnb_4bit_use_double_quant is True


def test_four_bit_is_auto_on_cuda_and_explicit_on_a_cpu():
    assert models.quantization_config_for("cpu") is None  # default: fp32 on a CPU
    assert models.quantization_config_for("cpu", load_in_4bit="auto") is None
    assert models.quantization_config_for("cpu", load_in_4bit=True).load_in_4bit
    assert models.quantization_config_for("cuda", load_in_4bit=False) is None
    with pytest.raises(runtime.UsageError, match="--load_in_4bit must be auto, True or False, got 'yes'"):
        runtime.check_load_in_4bit("yes")
    runtime.check_load_in_4bit("auto")
    runtime.check_load_in_4bit(False)


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
    folder = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def test_generation_loads_four_bit_without_the_training_preparation(small_llama, monkeypatch):
    import peft

    prepared = []
    real = peft.prepare_model_for_kbit_training
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", lambda model, **kw: prepared.append(1) or real(model, **kw))
    for_generation = models.load_base_model(small_llama, load_in_4bit=True, for_training=False)
    assert prepared == []
    assert for_generation.is_loaded_in_4bit
    assert type(for_generation.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    models.load_base_model(small_llama, load_in_4bit=True, for_training=True)
    assert prepared == [1]
    assert not getattr(models.load_base_model(small_llama), "is_loaded_in_4bit", False)  # default on a CPU: fp32


def test_sft_sdpo_and_inference_run_end_to_end_in_four_bit_on_a_cpu(synthetic_dir, tmp_path, monkeypatch):
    """The path every GPU user runs (NF4 base + k-bit preparation + LoRA, the reference adapter on the same
    quantized base, adapter saving, generation from a quantized base), here on bitsandbytes' CPU kernels."""
    import json

    from safetensors.torch import load_file

    import inference
    import sft
    import softmax_dpo

    loaded = []  # (4-bit?, prepared for training?) of every base model a stage loads
    real_load = models.load_base_model

    def spy(*args, **kwargs):
        model = real_load(*args, **kwargs)
        loaded.append((getattr(model, "is_loaded_in_4bit", False), kwargs.get("for_training", True)))
        return model

    monkeypatch.setattr(models, "load_base_model", spy)
    common = {"model_name": "tiny", "dataset": str(synthetic_dir), "batch_size": 4, "max_steps": 2, "eval_step": 2,
              "max_eval_samples": 4, "load_in_4bit": True}
    sft_final = sft.train(output_dir=str(tmp_path / "sft"), learning_rate=3e-3, **common)
    sdpo_final = softmax_dpo.train(resume_from_checkpoint=sft_final, output_dir=str(tmp_path / "sdpo"), neg_num=3,
                                   **common)
    state = json.loads((tmp_path / "sdpo" / "checkpoint-2" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert logged and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logged)
    sft_weights, sdpo_weights = load_file(f"{sft_final}/adapter_model.safetensors"), load_file(
        f"{sdpo_final}/adapter_model.safetensors")
    assert sft_weights.keys() == sdpo_weights.keys()
    assert any(not torch.equal(sft_weights[k], sdpo_weights[k]) for k in sft_weights if "lora_B" in k)  # S-DPO trained
    metrics = inference.evaluate(base_model="tiny", resume_from_checkpoint=sdpo_final, dataset=str(synthetic_dir),
                                 output_dir=str(tmp_path / "eval"), max_samples=4, batch_size=4, load_in_4bit=True)
    assert metrics["n"] == 4 and 0 <= metrics["hr@1"] <= metrics["valid_ratio"] <= 1
    assert loaded == [(True, True), (True, True), (True, False)]  # SFT, S-DPO, inference
