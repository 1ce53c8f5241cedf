"""Stage plumbing: wandb settings, device-dependent training arguments, output-dir safety."""

from __future__ import annotations

import os

import pytest

import runtime


def test_wandb_only_when_a_project_is_given_and_offline_by_default(monkeypatch, tmp_path):
    for key in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_NAME", "WANDB_DIR", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(key, raising=False)  # restored after the test
    assert runtime.report_to("", "") == []
    assert "WANDB_MODE" not in os.environ
    assert runtime.report_to("sdpo", "run-1", str(tmp_path / "logs")) == ["wandb"]
    env = os.environ
    assert env["WANDB_MODE"] == "offline" and env["WANDB_PROJECT"] == "sdpo" and env["WANDB_NAME"] == "run-1"
    assert env["WANDB_DIR"] == str(tmp_path / "logs") and (tmp_path / "logs").is_dir()
    monkeypatch.setenv("WANDB_MODE", "online")
    runtime.report_to("sdpo", "run-1")
    assert env["WANDB_MODE"] == "online"  # an explicit choice is respected


@pytest.mark.parametrize("native_bf16", [False, True])
def test_cpu_training_uses_bf16_only_where_the_cpu_has_it_and_never_checkpoints(monkeypatch, native_bf16):
    monkeypatch.setattr(runtime.hardware, "bf16_supported", lambda device: native_bf16)
    arguments = runtime.device_training_arguments()
    assert arguments["bf16"] is native_bf16 and arguments["gradient_checkpointing"] is False
    assert runtime.device_training_arguments(bf16=False)["bf16"] is False  # --bf16 False turns it off
    assert runtime.device_training_arguments(bf16=True)["bf16"] is True


def test_output_dir_with_a_finished_run_needs_the_overwrite_flag(tmp_path):
    (tmp_path / runtime.FINAL_CHECKPOINT).mkdir()
    with pytest.raises(runtime.UsageError, match="--overwrite_output_dir"):
        runtime.check_output_dir(tmp_path, overwrite=False, finished_marker=runtime.FINAL_CHECKPOINT)
    assert runtime.check_output_dir(tmp_path, overwrite=True, finished_marker=runtime.FINAL_CHECKPOINT) == tmp_path
    assert runtime.check_output_dir(tmp_path / "new", overwrite=False, finished_marker="x") == tmp_path / "new"


def test_a_run_with_max_steps_tokenizes_only_the_records_its_steps_consume(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    records = list(range(1000))  # stand-ins: the function only selects
    chosen = runtime.records_for_steps(records, max_steps=10, batch_size=8, gradient_accumulation_steps=2, seed=0)
    assert len(chosen) == 160 and len(set(chosen)) == 160 and chosen == sorted(chosen)
    assert chosen != records[:160]  # a random sample of the split, not its first records
    assert runtime.records_for_steps(records, 10, 8, 2, seed=0) == chosen  # same seed, same records
    assert runtime.records_for_steps(records, 10, 8, 2, seed=1) != chosen
    monkeypatch.setenv("WORLD_SIZE", "4")  # each of 4 processes draws its own batches
    assert len(runtime.records_for_steps(records, 10, 8, 2, seed=0)) == 640
    assert runtime.records_for_steps(records, -1, 8, 2, seed=0) == records  # epochs: everything
    assert runtime.records_for_steps(records[:50], 10, 8, 2, seed=0) == records[:50]  # fewer than needed


@pytest.mark.parametrize("value, expected", [(40, 40), (40.0, 40), (0.2, 0.2), (0.1, 0.1)])
def test_eval_step_is_whole_steps_or_a_fraction_of_the_run(value, expected):
    checked = runtime.check_eval_step(value)
    assert checked == expected and type(checked) is type(expected)


@pytest.mark.parametrize("value", [0, -1, 1.5, "0.2", True])
def test_bad_eval_step_is_one_line(value):
    with pytest.raises(runtime.UsageError, match="--eval_step must be"):
        runtime.check_eval_step(value)


def test_a_fractional_eval_step_evaluates_and_saves_at_that_fraction_of_the_run(synthetic_dir, tmp_path):
    import json

    import sft

    sft.train(model_name="tiny", dataset=str(synthetic_dir), output_dir=str(tmp_path), batch_size=2, max_steps=4,
              eval_step=0.5, max_eval_samples=4)
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "eval_loss" in entry] == [2, 4]
    assert (tmp_path / "checkpoint-2").exists()
