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
