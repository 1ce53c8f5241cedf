"""The paper's GPU path, checked on a CPU: fp32 adapters under 4-bit, the default tiny model in 4-bit, the number of
processes and the effective batch, no silent CPU fallback, bf16 only where supported, fp32 weights for models
trained in full, the Triton toolchain, evaluation shared by torchrun processes, one sync per non-finite check and fp16's
overflowing gradients left to its loss scaler.
CUDA itself is mocked (device queries) or replaced by bitsandbytes' CPU kernels and gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hardware
import models
import runtime

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_tiny_size(monkeypatch):
    """The tiny model at the size users run (the suite otherwise builds a smaller one)."""
    monkeypatch.setenv("SDPO_TINY_CONFIG", "{}")


def _optimizer_state_dtypes(checkpoint: Path) -> set[torch.dtype]:
    state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False)["state"]
    return {value.dtype for entry in state.values() for key, value in entry.items() if key in ("exp_avg", "exp_avg_sq")}


def test_four_bit_runs_at_the_default_tiny_size_with_fp32_adapters_and_optimizer_state(
        default_tiny_size, synthetic_dir, tmp_path):
    """SFT, S-DPO and inference in 4-bit on bitsandbytes' CPU kernels at the default tiny size (whose MLP has 688
    rows, which the packed AVX512-BF16 kernel refuses), with every trainable tensor and its Adam state in fp32 (trl
    casts QLoRA adapters to bf16, where lr 1e-5 updates round to nothing)."""
    from safetensors.torch import load_file

    import inference
    import sft
    import softmax_dpo

    assert json.loads(os.environ["SDPO_TINY_CONFIG"]) == {}
    common = {"model_name": "tiny", "dataset": str(synthetic_dir), "batch_size": 4, "max_steps": 2, "eval_step": 2,
              "max_eval_samples": 4, "load_in_4bit": True, "learning_rate": 1e-5}
    sft_final = sft.train(output_dir=str(tmp_path / "sft"), **common)
    sdpo_final = softmax_dpo.train(resume_from_checkpoint=sft_final, output_dir=str(tmp_path / "sdpo"), neg_num=3,
                                   **common)
    for stage, final in (("sft", sft_final), ("sdpo", sdpo_final)):
        weights = load_file(f"{final}/adapter_model.safetensors")
        assert {tensor.dtype for tensor in weights.values()} == {torch.float32}, stage
        assert _optimizer_state_dtypes(tmp_path / stage / "checkpoint-2") == {torch.float32}, stage
    metrics = inference.evaluate(base_model="tiny", resume_from_checkpoint=sdpo_final, dataset=str(synthetic_dir),
                                 output_dir=str(tmp_path / "eval"), max_samples=8, batch_size=4, load_in_4bit=True)
    assert metrics["n"] == 8 and 0 <= metrics["hr@1"] <= metrics["valid_ratio"] <= 1 and "rank_hr@1" in metrics


def test_four_bit_layers_the_packed_cpu_kernel_cannot_take_use_the_portable_one(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=172, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    model = models.load_base_model(str(tmp_path), load_in_4bit=True, for_training=False).eval()
    layer = model.model.layers[0]
    assert layer.mlp.gate_proj.support_avx512bf16_for_cpu is False  # 172 rows
    assert layer.mlp.down_proj.support_avx512bf16_for_cpu is False  # 172 inputs: not whole 64-weight blocks
    assert layer.self_attn.q_proj.support_avx512bf16_for_cpu == hardware.bf16_supported("cpu")  # 64 x 64: as it was
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, 128) and torch.isfinite(logits).all()


def test_upcast_trainable_parameters_leaves_frozen_ones_alone():
    layer = torch.nn.Linear(4, 4).to(torch.bfloat16)
    frozen = torch.nn.Linear(4, 4).to(torch.bfloat16).requires_grad_(False)
    model = torch.nn.Sequential(layer, frozen)
    assert models.upcast_trainable_parameters(model) == ["0.weight", "0.bias"]
    assert layer.weight.dtype == torch.float32 and frozen.weight.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------- processes


def test_gradient_accumulation_keeps_the_effective_batch_or_says_why_not():
    assert [hardware.gradient_accumulation_for(128, 4, n) for n in (1, 2, 4, 8)] == [32, 16, 8, 4]
    with pytest.raises(hardware.DeviceError, match="128 cannot be split into 3 processes x batch 4"):
        hardware.gradient_accumulation_for(128, 4, 3)


def test_stage_flag_effective_batch_size_sets_the_accumulation_for_the_launch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert runtime.accumulation_steps(1, 128, 4) == 16
    assert runtime.accumulation_steps(3, None, 4) == 3  # without it, --gradient_accumulation_steps stands
    with pytest.raises(runtime.UsageError, match="effective batch of 100"):
        runtime.accumulation_steps(1, 100, 4)


def test_one_process_on_a_machine_with_several_gpus_uses_one_with_the_batch_asked_for(monkeypatch, tmp_path):
    """The Trainer reads `args.train_batch_size` (per device x n_gpu) when it is built: limiting a single process
    to one GPU afterwards must also shrink the batch its dataloader draws, or a 4-GPU machine trains on 4 x the
    batch (and 4 x the effective batch) on GPU 0."""
    import transformers

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    arguments = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                                               report_to=[], use_cpu=True)
    arguments._n_gpu = 4  # what transformers sets on a machine with 4 visible GPUs
    trainer = transformers.Trainer(model=torch.nn.Linear(2, 2), args=arguments,
                                   train_dataset=[{"input": [0.0, 0.0]}] * 16)
    runtime.prepare_trainer_for_device(trainer)
    assert trainer.args.n_gpu == 1
    assert len(next(iter(trainer.get_train_dataloader()))["input"]) == 2


def test_default_process_count_is_the_visible_gpus(monkeypatch):
    monkeypatch.delenv(hardware.DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert hardware.default_process_count() == 4
    monkeypatch.setenv(hardware.DEVICE_ENV, "cpu")
    assert hardware.default_process_count() == 1
    monkeypatch.delenv(hardware.DEVICE_ENV)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.default_process_count() == 1


# ---------------------------------------------------------------------------------------------- no silent fallback


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(hardware.DEVICE_ENV, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(hardware, "nvidia_gpus_present", lambda: False)
    return monkeypatch


def test_nvidia_gpus_torch_cannot_use_stop_the_run_unless_the_cpu_is_asked_for(no_cuda):
    assert hardware.compute_device() == "cpu"  # a machine without GPUs: the CPU, as always
    no_cuda.setattr(hardware, "nvidia_gpus_present", lambda: True)
    with pytest.raises(hardware.DeviceError, match="NVIDIA GPUs but torch cannot use them .*SDPO_DEVICE=cpu"):
        hardware.compute_device()
    no_cuda.setenv(hardware.DEVICE_ENV, "cpu")
    assert hardware.compute_device() == "cpu"


def test_several_processes_without_cuda_need_the_cpu_asked_for(no_cuda):
    no_cuda.setenv("WORLD_SIZE", "4")
    with pytest.raises(hardware.DeviceError, match="4 processes were started but torch has no CUDA device"):
        hardware.compute_device()
    no_cuda.setenv(hardware.DEVICE_ENV, "cpu")
    assert hardware.compute_device() == "cpu"


def test_asking_for_cuda_without_it_or_for_an_unknown_device_is_one_line(no_cuda):
    no_cuda.setenv(hardware.DEVICE_ENV, "cuda")
    with pytest.raises(hardware.DeviceError, match="SDPO_DEVICE=cuda but torch cannot use CUDA"):
        hardware.compute_device()
    no_cuda.setenv(hardware.DEVICE_ENV, "tpu")
    with pytest.raises(hardware.DeviceError, match="must be one of auto, cuda, cpu"):
        hardware.compute_device()


def _llama_7b_config(folder: Path) -> str:
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32).save_pretrained(folder)
    return str(folder)


def test_a_large_model_without_cuda_stops_before_loading_unless_the_cpu_is_asked_for(no_cuda, tmp_path):
    path = _llama_7b_config(tmp_path)
    with pytest.raises(hardware.DeviceError, match=r"about 6\.7B parameters and no CUDA device.*SDPO_DEVICE=cpu"):
        models.load_base_model(path)
    no_cuda.setenv(hardware.DEVICE_ENV, "cpu")
    hardware.check_model_fits_device(path, "cpu")  # asked for: allowed


def test_the_stage_cli_reports_a_missing_gpu_in_one_line(synthetic_dir, tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "SDPO_DEVICE": "auto", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "sft.py", "--dataset", str(synthetic_dir), "--output_dir",
                             str(tmp_path / "sft"), "--max_steps", "1"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    if hardware.nvidia_gpus_present():
        pytest.skip("this machine has NVIDIA GPUs")  # the message then names them instead
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 2 processes were started but torch has no CUDA device: run one process, or set SDPO_DEVICE=cpu "
        "to run them data-parallel on the CPU (gloo)")
    assert not (tmp_path / "sft").exists()


# ---------------------------------------------------------------------------------------------- precision


@pytest.fixture
def fake_cuda(monkeypatch):
    """Device queries answer as on a CUDA machine (nothing runs on it)."""
    monkeypatch.delenv(hardware.DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    return monkeypatch


@pytest.mark.parametrize("bf16_gpu", [True, False], ids=["a100", "v100"])
def test_bf16_only_on_gpus_that_have_it_else_fp16_compute(fake_cuda, bf16_gpu):
    fake_cuda.setattr(torch.cuda, "is_bf16_supported", lambda *a: bf16_gpu)
    arguments = runtime.device_training_arguments()
    assert arguments["bf16"] is bf16_gpu and arguments["fp16"] is (not bf16_gpu)
    assert models.quantization_config_for("cuda").bnb_4bit_compute_dtype == (
        torch.bfloat16 if bf16_gpu else torch.float16)
    assert runtime.device_training_arguments(bf16=False)["fp16"] is False  # --bf16 False: fp32 compute


def test_on_cuda_a_model_trained_in_full_keeps_fp32_weights_and_a_lora_base_is_half(fake_cuda, tmp_path):
    """The cpu profile's tiny model on a GPU: fp32 weights (bf16 only as autocast), as on the CPU."""
    from transformers import AutoModelForCausalLM

    fake_cuda.setattr(torch.cuda, "is_bf16_supported", lambda *a: True)
    loads = []
    fake_cuda.setattr(AutoModelForCausalLM, "from_pretrained", lambda path, **kwargs: loads.append(kwargs) or object())
    fake_cuda.setattr(hardware, "check_model_fits_device", lambda path, device: None)
    models.load_base_model("some/model", full_precision=True)
    models.load_base_model("some/model", load_in_4bit=True, for_training=False)
    assert loads[0]["dtype"] == torch.float32 and "quantization_config" not in loads[0]
    assert loads[1]["dtype"] == torch.bfloat16 and loads[1]["quantization_config"].load_in_4bit


# ---------------------------------------------------------------------------------------------- Triton


def test_a_missing_compiler_or_python_headers_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    assert "no C compiler" in hardware.triton_toolchain_problem()
    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(hardware.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    assert "no Python headers" in hardware.triton_toolchain_problem()
    (tmp_path / "Python.h").write_text("")
    assert hardware.triton_toolchain_problem() is None


def test_without_a_toolchain_sft_uses_trls_torch_kernel_on_cuda(monkeypatch):
    import trl.kernels.chunked_logprob as chunked

    monkeypatch.setattr(chunked, "_TRITON_AVAILABLE", True)
    monkeypatch.setattr(chunked, "_use_triton", chunked._use_triton)  # restored after the test
    assert chunked._use_triton(torch.device("cuda"))
    monkeypatch.setattr(hardware, "triton_toolchain_problem", lambda: "no C compiler (apt-get install gcc, or set CC)")
    hardware.prepare_fused_lm_head("cpu")
    assert chunked._use_triton(torch.device("cuda"))  # nothing changes off CUDA
    hardware.prepare_fused_lm_head("cuda")
    assert not chunked._use_triton(torch.device("cuda"))


# ---------------------------------------------------------------------------------------------- the guard


def test_the_non_finite_guard_leaves_fp16_overflows_to_the_loss_scaler(tmp_path):
    """Under fp16 (GPUs without bf16) gradients are scaled and an infinite one is routine: the scaler skips that
    step and lowers the scale. Only a non-finite loss stops such a run; without a scaler an infinite gradient does."""
    from types import SimpleNamespace

    from trainer.non_finite import NonFiniteError, StopOnNonFinite

    class Parent:
        def training_step(self, model, inputs, num_items_in_batch=None):
            model.weight.grad = torch.full_like(model.weight, float("inf"))  # an overflow of the scaled loss
            return self.loss

    class Trainer(StopOnNonFinite, Parent):
        def __init__(self, scaler, loss):
            self.accelerator = SimpleNamespace(scaler=scaler)
            self.args = SimpleNamespace(output_dir=str(tmp_path))
            self.state = SimpleNamespace(global_step=0)
            self.loss = torch.tensor(loss)

    model = torch.nn.Linear(2, 2)
    scaler = torch.amp.GradScaler("cpu")
    assert Trainer(scaler, 1.0).training_step(model, {}) == 1.0
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        Trainer(scaler, float("nan")).training_step(model, {})
    with pytest.raises(NonFiniteError, match="non-finite gradient"):
        Trainer(None, 1.0).training_step(model, {})


def test_the_non_finite_guard_reads_the_device_once(monkeypatch):
    from trainer.non_finite import non_finite_part

    grads = [torch.randn(3) for _ in range(50)]
    reads = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: reads.append(1) or real_cpu(self, *a, **k))
    assert non_finite_part(torch.tensor(1.0), grads) is None
    assert len(reads) == 1
    grads[17][1] = float("nan")
    assert non_finite_part(torch.tensor(1.0), grads) == "gradient"
    assert non_finite_part(torch.tensor(float("inf")), grads) == "loss"


# ---------------------------------------------------------------------------------------------- evaluation


def test_torchrun_processes_share_the_evaluation_and_write_what_one_process_writes(synthetic_dir, tmp_path):
    """2 gloo processes on a CPU: each evaluates every 2nd chunk; the files equal a single process's."""
    flags = ["inference.py", "--base_model", "tiny", "--dataset", str(synthetic_dir), "--max_samples", "12",
             "--chunk_size", "4", "--batch_size", "4"]
    env = {**os.environ, "SDPO_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *flags, "--output_dir", str(tmp_path / "one")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    shared = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             *flags, "--output_dir", str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert shared.returncode == 0, shared.stderr[-2000:]
    assert "process 0 of 2: 2 of 3 chunks" in shared.stderr and "process 1 of 2: 1 of 3 chunks" in shared.stderr
    one, two = tmp_path / "one", tmp_path / "two"
    assert (two / "predictions.jsonl").read_text() == (one / "predictions.jsonl").read_text()
    metrics_one, metrics_two = (json.loads((folder / "metrics.json").read_text()) for folder in (one, two))
    assert metrics_one.pop("processes") == 1 and metrics_two.pop("processes") == 2
    metrics_one.pop("seconds"), metrics_two.pop("seconds")
    assert metrics_two == metrics_one and metrics_one["n"] == 12
    assert not (two / "predictions.partial").exists()
