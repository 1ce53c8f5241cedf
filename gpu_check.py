"""The first command on a GPU machine: is this machine ready for the paper's path, and does that path run?

    bash gpu_check.sh                          # a few minutes on one GPU; on a CPU the CUDA checks are skipped
    MODEL_NAME=/models/Llama-2-7b-hf bash gpu_check.sh   # the model the paper profile will load

It reports the environment (torch's CUDA build, the driver, GPUs, bf16, what Triton needs, access to the
configured model), then runs the paper's path at tiny scale on the synthetic data: the base in 4-bit NF4 with
LoRA, SFT steps whose loss falls and whose adapter and optimizer state are fp32, shared vs concatenated
completion log-probs, S-DPO steps, generation and ranking of 64 prompts, and a 2-process (torchrun) SFT where
there are 2+ GPUs. It prints a pass/fail table and writes `report.json` (one entry per check: name, status
passed/failed/skipped, detail) under `--output_dir`; the exit status is 1 when a check failed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

import hardware
import models
import runtime

PAPER_MODEL = "meta-llama/Llama-2-7b-hf"
REPO = Path(__file__).resolve().parent


class Skip(Exception):
    """The check does not apply on this machine; the message says why."""


class Report:
    def __init__(self):
        self.entries: list[dict] = []

    def run(self, name: str, check) -> object:
        begin = time.time()
        try:
            detail, status = check(), "passed"
        except Skip as reason:
            detail, status = str(reason), "skipped"
        except Exception as error:  # a failed check is reported, the next one still runs
            detail, status = f"{type(error).__name__}: {error}".splitlines()[0][:300], "failed"
            traceback.print_exc()
        self.entries.append({"name": name, "status": status, "detail": str(detail),
                             "seconds": round(time.time() - begin, 1)})
        print(f"[{status}] {name}: {detail}", flush=True)
        return detail

    def table(self) -> str:
        width = max(len(entry["name"]) for entry in self.entries)
        lines = [f"{'check':<{width}}  status   detail", f"{'-' * width}  -------  ------"]
        lines += [f"{e['name']:<{width}}  {e['status']:<7}  {e['detail']}" for e in self.entries]
        return "\n".join(lines)


def needs_cuda() -> None:
    if models.compute_device() != "cuda":
        raise Skip("no CUDA device (CPU run)")


# ---------------------------------------------------------------------------------------------- environment


def torch_build() -> str:
    return (f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU wheel)'}, "
            f"Python {platform.python_version()}")


def driver() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        if hardware.nvidia_gpus_present():
            raise RuntimeError("NVIDIA GPUs present but nvidia-smi is missing")
        raise Skip("no NVIDIA driver")
    out = subprocess.run([smi, "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or "nvidia-smi failed")
    return "; ".join(sorted(set(out.stdout.strip().splitlines())))


def gpus() -> str:
    device = models.compute_device()  # raises when GPUs are present but torch cannot use them
    if device != "cuda":
        raise Skip("no CUDA device (CPU run)")
    count = torch.cuda.device_count()
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    return f"{count} visible: {', '.join(names)}"


def bf16() -> str:
    needs_cuda()
    if not hardware.bf16_supported("cuda"):
        raise RuntimeError("no bf16 on this GPU: compute falls back to fp16 (the paper used bf16)")
    return "supported"


def triton_toolchain() -> str:
    needs_cuda()
    problem = hardware.triton_toolchain_problem()
    if problem:
        raise RuntimeError(f"{problem}: SFT would use trl's slower torch kernel")
    return "C compiler and Python headers found"


def model_access(model_name: str) -> str:
    if model_name in (*models.TINY_MODELS, models.SMOLLM2):
        return f"{model_name}: built locally"
    if Path(model_name).is_dir():
        if not (Path(model_name) / "config.json").exists():
            raise RuntimeError(f"{model_name}: no config.json in the folder")
        return f"local folder {model_name}"
    needs_cuda()  # the hub is reached only where the paper's model will run
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model_name)
    except OSError as error:
        raise RuntimeError(f"{model_name}: not accessible ({str(error).splitlines()[0][:120]}); accept the licence "
                           "on its hub page and `huggingface-cli login`, or set MODEL_NAME to a local folder") from None
    return f"{model_name}: config readable from the hub"


# ---------------------------------------------------------------------------------------------- the paper's path


def _synthetic(folder: Path) -> Path:
    from data import synthetic

    synthetic.generate(folder, num_users=80, seed=0)
    return folder


def _logged_losses(output: Path) -> list[float]:
    history = json.loads((output / "log_history.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def _optimizer_dtypes(checkpoint: Path) -> set[str]:
    state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False)["state"]
    return {str(v.dtype) for entry in state.values() for k, v in entry.items() if k in ("exp_avg", "exp_avg_sq")}


def sft_in_four_bit(data: Path, output: Path, steps: int) -> str:
    import sft
    from safetensors.torch import load_file

    final = sft.train(model_name="tiny", dataset=str(data), output_dir=str(output), overwrite_output_dir=True,
                      load_in_4bit=True, batch_size=8, max_steps=steps, eval_step=steps // 4,
                      learning_rate=1e-3, max_eval_samples=16)
    losses = _logged_losses(output)
    if not losses[-1] < losses[0]:
        raise RuntimeError(f"the SFT loss did not fall: {losses}")
    adapter = {str(t.dtype) for t in load_file(f"{final}/adapter_model.safetensors").values()}
    optimizer = _optimizer_dtypes(max(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])))
    if adapter != {"torch.float32"} or optimizer != {"torch.float32"}:
        raise RuntimeError(f"trainable state not fp32: adapter {adapter}, optimizer {optimizer}")
    return f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps; adapter and Adam state fp32"


def shared_equals_concat(data: Path, checkpoint: str) -> str:
    import data_interface as di
    from trainer import SoftmaxDPOCollator, completion_logps

    stage = runtime.load_stage_data(("train", "val", "test"), str(data))
    base = runtime.base_model_path("tiny", checkpoint, stage, 0)
    tokenizer = models.load_tokenizer(runtime.tokenizer_path(base, checkpoint))
    model = models.load_adapter(models.load_base_model(base, load_in_4bit=True, for_training=False), checkpoint,
                                trainable=False).eval()
    rows = [di.tokenize_preference_row(tokenizer, row, 512)
            for row in di.build_preference_rows(stage.test[:8], stage.templates, 3, 0)]
    batch = {k: v.to(next(model.parameters()).device) for k, v in SoftmaxDPOCollator(tokenizer.pad_token_id)(
        [{key: row[key] for key in ("prompt_input_ids", "completion_input_ids")} for row in rows]).items()}
    args = [batch[k] for k in ("prompt_input_ids", "prompt_attention_mask", "completion_input_ids",
                               "completion_attention_mask")]
    with torch.no_grad(), runtime.autocast(None):
        shared = completion_logps(model, *args, forward="shared").float()
        concat = completion_logps(model, *args, forward="concat").float()
    gap = (shared - concat).abs().max().item()
    tolerance = 0.05 * max(1.0, concat.abs().max().item() / 10)  # bf16 rounding of sums over a few tokens
    if not gap <= tolerance:
        raise RuntimeError(f"shared and concat log-probs differ by {gap:.4f} (tolerance {tolerance:.3f})")
    return f"max |shared - concat| = {gap:.2e} over {concat.numel()} completions"


def sdpo_in_four_bit(data: Path, sft_final: str, output: Path) -> str:
    import softmax_dpo

    softmax_dpo.train(model_name="tiny", resume_from_checkpoint=sft_final, dataset=str(data),
                      output_dir=str(output), overwrite_output_dir=True, load_in_4bit=True, neg_num=3,
                      batch_size=4, max_steps=4, eval_step=4, learning_rate=1e-4, max_eval_samples=8)
    losses = _logged_losses(output)
    if not losses or not all(loss == loss and abs(loss) < float("inf") for loss in losses):
        raise RuntimeError(f"S-DPO losses not finite: {losses}")
    return f"4 steps, N = 3, loss {losses[-1]:.3f}"


def evaluation(data: Path, checkpoint: str, output: Path) -> str:
    import inference

    metrics = inference.evaluate(base_model="tiny", resume_from_checkpoint=checkpoint, dataset=str(data),
                                 output_dir=str(output), overwrite_output_dir=True, max_samples=64,
                                 batch_size=16, load_in_4bit=True)
    return (f"n {metrics['n']}: HR@1 {metrics['hr@1']:.3f}, ValidRatio {metrics['valid_ratio']:.3f}, "
            f"rank HR@1 {metrics['rank_hr@1']:.3f} in {metrics['seconds']} s")


def two_processes(data: Path, output: Path) -> str:
    needs_cuda()
    if torch.cuda.device_count() < 2:
        raise Skip("one GPU")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "sft.py",
               "--model_name", "tiny", "--dataset", str(data), "--output_dir", str(output), "--overwrite_output_dir",
               "--max_steps", "4", "--eval_step", "4", "--batch_size", "4", "--load_in_4bit", "True"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "torchrun failed")
    return "torchrun SFT, 2 processes: finished"


def check(output_dir: str = "outputs/gpu_check", model_name: str = PAPER_MODEL, sft_steps: int = 24) -> int:
    """Run every check; returns the exit status (1 when a check failed)."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = Report()
    report.run("torch build", torch_build)
    report.run("NVIDIA driver", driver)
    report.run("GPUs visible to torch", gpus)
    report.run("bf16", bf16)
    report.run("Triton toolchain (SFT's fused LM head)", triton_toolchain)
    report.run(f"model access ({model_name})", lambda: model_access(model_name))
    os.environ.setdefault("WANDB_MODE", "disabled")
    data = _synthetic(output / "synthetic")
    sft_final = str(output / "sft" / runtime.FINAL_CHECKPOINT)
    report.run("SFT in 4-bit: loss falls, fp32 adapter + optimizer", lambda: sft_in_four_bit(data, output / "sft",
                                                                                               sft_steps))
    if Path(sft_final).exists():
        report.run("shared = concat log-probs (4-bit, autocast)", lambda: shared_equals_concat(data, sft_final))
        report.run("S-DPO in 4-bit", lambda: sdpo_in_four_bit(data, sft_final, output / "sdpo"))
        report.run("generation + ranking, 64 prompts", lambda: evaluation(data, sft_final, output / "eval"))
    report.run("2 processes (torchrun)", lambda: two_processes(data, output / "sft-2proc"))
    runtime.save_json(output / "report.json", {"checks": report.entries})
    print("\n" + report.table())
    failed = [entry["name"] for entry in report.entries if entry["status"] == "failed"]
    print(f"\n{len(report.entries) - len(failed)} of {len(report.entries)} checks passed or skipped; report: "
          f"{output / 'report.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    runtime.setup_logging()
    import fire

    sys.exit(fire.Fire(check, serialize=lambda result: None))
