"""`bash gpu_check.sh` on a CPU: every check that applies runs, the CUDA ones say skipped, the report is written."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import gpu_check

REPO = Path(__file__).resolve().parents[1]
CUDA_CHECKS = {"NVIDIA driver", "GPUs visible to torch", "bf16", "Triton toolchain (SFT's fused LM head)",
               "model access (meta-llama/Llama-2-7b-hf)", "2 processes (torchrun)"}


def test_gpu_check_passes_on_a_cpu_with_the_cuda_checks_skipped(tmp_path):
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "gpu_check"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checks = json.loads((tmp_path / "gpu_check" / "report.json").read_text())["checks"]
    status = {entry["name"]: entry["status"] for entry in checks}
    assert {name for name, value in status.items() if value == "skipped"} == CUDA_CHECKS
    assert {name for name, value in status.items() if value == "passed"} == set(status) - CUDA_CHECKS
    assert len(status) == 11 and all(entry["detail"] for entry in checks)
    table = result.stdout[result.stdout.index("check "):]
    assert "SFT in 4-bit: loss falls, fp32 adapter + optimizer  passed" in table


def test_a_failed_check_is_reported_the_others_still_run_and_the_exit_status_is_1(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("trainable state not fp32: adapter {'torch.bfloat16'}")

    monkeypatch.setattr(gpu_check, "_synthetic", lambda folder: folder)
    monkeypatch.setattr(gpu_check, "sft_in_four_bit", broken)
    monkeypatch.setattr(gpu_check, "model_access", lambda name: "local")
    assert gpu_check.check(output_dir=str(tmp_path)) == 1
    checks = {entry["name"]: entry for entry in json.loads((tmp_path / "report.json").read_text())["checks"]}
    failed = checks["SFT in 4-bit: loss falls, fp32 adapter + optimizer"]
    assert failed["status"] == "failed" and "not fp32" in failed["detail"]
    assert checks["torch build"]["status"] == "passed" and checks["2 processes (torchrun)"]["status"] == "skipped"
