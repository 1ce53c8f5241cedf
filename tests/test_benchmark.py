"""The benchmark script runs every mode and writes the JSON the README documents (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_benchmark_writes_every_mode_and_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "benchmarks/bench_train_step.py", "--ns", "2", "--steps", "1", "--warmup", "0",
               "--batch_size", "2", "--prompt_len", "24", "--completion_len", "3", "--eval_prompts", "4",
               "--eval_batch_size", "2", "--naive_eval_batch_sizes", "2,4", "--json", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads(out.read_text())
    assert bench["sft_s"] > 0 and bench["sft_trl_s"] > 0 and bench["sft_trl_compact_s"] > 0
    for mode in ("concat_s", "shared_s", "shared_ref_s"):
        assert set(bench[mode]) == {"2"} and all(v > 0 for v in bench[mode].values())
    assert set(bench["peak_rss_mb"]) == {"sft", "concat_2", "shared_2"}
    assert bench["eval_prompts_per_s"]["naive"] == bench["eval_prompts_per_s"]["naive_by_batch"]["2"]
    assert bench["eval_prompts_per_s"]["ours"] > 0 and set(bench["eval_prompts_per_s"]["naive_by_batch"]) == {"2", "4"}
    assert bench["config"]["batch_size"] == 2 and bench["config"]["ns"] == [2]
    assert bench["eval_prompts_per_s"]["generate_and_rank_separate"] > 0
    assert bench["eval_prompts_per_s"]["generate_and_rank_shared"] > 0
    assert "concat/shared" in result.stdout and "naive at batch 4" in result.stdout
    assert "one shared prefill" in result.stdout and "labelled positions only (sft.py)" in result.stdout
