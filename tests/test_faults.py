"""Long runs survive faults: preference runs continue from a checkpoint, NaN stops cleanly, an unwritable
output folder is refused up front, and evaluation is deterministic."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import data_interface as di
import inference
import models
import runtime
import sft
import softmax_dpo
from trainer import NonFiniteError, checkpoint_problem

REPO = Path(__file__).resolve().parents[1]
COMMON = {"model_name": "tiny", "batch_size": 4, "max_steps": 4, "eval_step": 2, "max_eval_samples": 8}


@pytest.fixture(scope="module")
def sft_final(synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults_sft")
    return sft.train(dataset=str(synthetic_dir), output_dir=str(out), learning_rate=3e-3, **COMMON)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _kill_9_when(command: list[str], marker: Path, pause: float = 0.0) -> None:
    """Start `command`, wait until `marker` exists (and `pause` seconds more), then kill -9 it."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.02)
    time.sleep(pause)
    process.kill()
    process.wait()


def _assert_same_tensors(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert (got[name] - expected[name]).abs().max().item() <= 1e-6, name


@pytest.mark.parametrize("precompute", [False, True], ids=["reference-adapter", "precomputed-reference"])
def test_a_killed_preference_run_continues_to_the_same_adapter(synthetic_dir, sft_final, tmp_path, precompute):
    run = dict(dataset=str(synthetic_dir), resume_from_checkpoint=sft_final, neg_num=3, learning_rate=1e-3,
               precompute_ref_log_probs=precompute, **COMMON)
    whole = tmp_path / "whole"
    softmax_dpo.train(output_dir=str(whole), **run)
    # The state a kill -9 after step 2's checkpoint leaves: checkpoint-2 only, no final checkpoint.
    killed = tmp_path / "killed"
    shutil.copytree(whole / "checkpoint-2", killed / "checkpoint-2")
    softmax_dpo.train(output_dir=str(killed), resume_training=True, **run)
    state = json.loads((killed / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # The trained adapter at step 4 (not only the best-by-eval-loss final one) equals the uninterrupted run's.
    _assert_same_tensors(_tensors(killed / "checkpoint-4"), _tensors(whole / "checkpoint-4"))
    _assert_same_tensors(_tensors(killed / runtime.FINAL_CHECKPOINT), _tensors(whole / runtime.FINAL_CHECKPOINT))
    logged = [entry for entry in state["log_history"] if "eval_loss" in entry]
    expected = [entry for entry in json.loads((whole / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
                if "eval_loss" in entry]
    assert [entry["eval_loss"] for entry in logged] == pytest.approx([entry["eval_loss"] for entry in expected], abs=1e-6)


def test_checkpoints_are_renamed_when_whole_and_damaged_ones_are_skipped(synthetic_dir, sft_final, tmp_path):
    run = dict(dataset=str(synthetic_dir), resume_from_checkpoint=sft_final, neg_num=3, learning_rate=1e-3, **COMMON)
    whole = tmp_path / "whole"
    softmax_dpo.train(output_dir=str(whole), **run)
    assert not list(whole.glob("tmp-checkpoint-*"))
    state = json.loads((whole / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] in (str(whole / "checkpoint-2"), str(whole / "checkpoint-4"))
    # A run killed while writing checkpoint-4 leaves a staging folder, ignored; a checkpoint-4 whose weights
    # were truncated (a copy or disk fault) is skipped with a warning for the previous good one.
    killed = tmp_path / "killed"
    shutil.copytree(whole / "checkpoint-2", killed / "checkpoint-2")
    shutil.copytree(whole / "checkpoint-4", killed / "checkpoint-4")
    weights = killed / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(whole / "checkpoint-4", killed / "tmp-checkpoint-6")
    assert "adapter_model.safetensors is damaged" in checkpoint_problem(killed / "checkpoint-4")
    assert runtime.checkpoint_to_continue(killed, True) == killed / "checkpoint-2"
    with pytest.raises(runtime.UsageError, match=r"checkpoint-4: cannot continue from this checkpoint: "
                                                 r"adapter_model.safetensors is damaged"):
        runtime.checkpoint_to_continue(killed, str(killed / "checkpoint-4"))
    softmax_dpo.train(output_dir=str(killed), resume_training=True, **run)
    _assert_same_tensors(_tensors(killed / "checkpoint-4"), _tensors(whole / "checkpoint-4"))


def test_sft_continues_from_the_latest_complete_checkpoint(synthetic_dir, tmp_path):
    run = dict(dataset=str(synthetic_dir), learning_rate=3e-3, **COMMON)
    whole = tmp_path / "whole"
    sft.train(output_dir=str(whole), **run)
    killed = tmp_path / "killed"
    shutil.copytree(whole / "checkpoint-2", killed / "checkpoint-2")
    optimizer = killed / "checkpoint-2" / "optimizer.pt"
    shutil.copytree(killed / "checkpoint-2", killed / "checkpoint-3")  # a damaged later one: skipped
    (killed / "checkpoint-3" / "optimizer.pt").write_bytes(optimizer.read_bytes()[:100])
    assert checkpoint_problem(killed / "checkpoint-3") == "optimizer.pt is damaged (not a complete torch archive)"
    sft.train(output_dir=str(killed), resume_from_checkpoint=True, **run)
    _assert_same_tensors(_tensors(killed / "checkpoint-4"), _tensors(whole / "checkpoint-4"))


def test_resume_training_without_a_checkpoint_is_one_line(synthetic_dir, sft_final, tmp_path):
    with pytest.raises(runtime.UsageError, match="holds no complete checkpoint"):
        softmax_dpo.train(dataset=str(synthetic_dir), resume_from_checkpoint=sft_final, resume_training=True,
                          output_dir=str(tmp_path / "empty"), **COMMON)
    with pytest.raises(runtime.UsageError, match="cannot continue from this checkpoint: trainer_state.json is missing"):
        softmax_dpo.train(dataset=str(synthetic_dir), resume_from_checkpoint=sft_final,
                          resume_training=str(tmp_path), output_dir=str(tmp_path / "x"), **COMMON)


def _poison_training_call(monkeypatch, module, function: str, call_number: int, seen: list) -> None:
    """Make the model's `call_number`-th training-mode forward return NaN logits (and loss); record its ids."""
    original = getattr(module, function)

    def wrapped(*args, **kwargs):
        model = original(*args, **kwargs)
        calls = {"n": 0}

        def hook(module_, args_, kwargs_, output):
            if not module_.training:
                return output
            calls["n"] += 1
            if calls["n"] == call_number:
                ids, mask = kwargs_.get("input_ids"), kwargs_.get("attention_mask")
                seen.append((ids, mask))
                for key in ("loss", "logits", "log_probs"):  # whichever the model returns
                    if output.get(key) is not None:
                        output[key] = output[key] * float("nan")
            return output

        model.register_forward_hook(hook, with_kwargs=True)
        return model

    monkeypatch.setattr(module, function, wrapped)


def test_nan_in_one_sft_batch_stops_with_the_step_and_its_records(synthetic_dir, tmp_path, monkeypatch):
    seen: list = []
    _poison_training_call(monkeypatch, models, "attach_lora", 3, seen)
    out = tmp_path / "sft"
    with pytest.raises(NonFiniteError) as error:
        sft.train(dataset=str(synthetic_dir), output_dir=str(out), learning_rate=3e-3, **COMMON)
    message = str(error.value)
    assert "\n" not in message and message.startswith("step 3: non-finite loss on the batch of records [")
    assert f"last good checkpoint: {out / 'checkpoint-2'}" in message
    assert not (out / runtime.FINAL_CHECKPOINT).exists() and not (out / "checkpoint-4").exists()
    assert torch.isfinite(torch.cat([t.flatten() for t in _tensors(out / "checkpoint-2").values()])).all()
    # The records named are exactly those of the poisoned batch: re-tokenize them and compare.
    numbers = json.loads(message.split("records ")[1].split(" of ")[0])
    data = runtime.load_stage_data(("train",), str(synthetic_dir))
    tokenizer = models.load_tokenizer(str(out / "checkpoint-2"))
    rows = di.build_sft_rows([data.train[i] for i in numbers], data.templates, 0)
    expected = sorted(tuple(di.tokenize_sft_row(tokenizer, row, 512)["input_ids"]) for row in rows)
    ids, mask = seen[0]
    batch = sorted(tuple(t for t, m in zip(r, rm) if m) for r, rm in zip(ids.tolist(), mask.tolist()))
    assert len(numbers) == 4 and expected == batch


def test_nan_in_one_preference_batch_stops_before_any_final_checkpoint(synthetic_dir, sft_final, tmp_path, monkeypatch):
    seen: list = []
    _poison_training_call(monkeypatch, models, "load_adapter", 3, seen)  # the reference runs in eval mode
    out = tmp_path / "sdpo"
    with pytest.raises(NonFiniteError, match=r"^step 3: non-finite loss on the batch of records \[\d+, \d+, \d+, \d+\]"):
        softmax_dpo.train(dataset=str(synthetic_dir), resume_from_checkpoint=sft_final, output_dir=str(out), **COMMON)
    assert not (out / runtime.FINAL_CHECKPOINT).exists() and not (out / "checkpoint-4").exists()
    assert torch.isfinite(torch.cat([t.flatten() for t in _tensors(out / "checkpoint-2").values()])).all()


def test_the_cli_reports_a_nan_stop_in_one_line(synthetic_dir, tmp_path):
    """An extreme learning rate drives the tiny model to a non-finite loss; the CLI ends with one error line."""
    result = subprocess.run(
        [sys.executable, "softmax_dpo.py", "--model_name", "tiny", "--dataset", str(synthetic_dir), "--output_dir",
         str(tmp_path / "out"), "--resume_from_checkpoint", str(_full_sft(synthetic_dir, tmp_path)), "--full_finetune",
         "--learning_rate", "1e38", "--max_steps", "6", "--eval_step", "3", "--batch_size", "4",
         "--max_eval_samples", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(lines) == 1, result.stderr[-1500:]
    error = lines[0][lines[0].index("error: "):]  # a progress bar may precede it on the same line
    assert error.startswith("error: step ") and "non-finite loss" in error and "records [" in error
    assert not (tmp_path / "out" / runtime.FINAL_CHECKPOINT).exists()


def _full_sft(synthetic_dir, tmp_path) -> str:
    return sft.train(dataset=str(synthetic_dir), output_dir=str(tmp_path / "full_sft"), full_finetune=True,
                     learning_rate=3e-3, **COMMON)


def test_an_unwritable_output_folder_is_refused_before_training(synthetic_dir, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    monkeypatch.setattr(models, "load_base_model", refuse)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for call in (lambda out: sft.train(dataset=str(synthetic_dir), output_dir=out),
                 lambda out: inference.evaluate(dataset=str(synthetic_dir), output_dir=out)):
        with pytest.raises(runtime.UsageError, match=r"a_file/out: cannot write to the output folder"):
            call(str(blocker / "out"))
    assert blocker.read_text() == "not a folder"


def test_only_the_main_process_probes_the_output_folder(tmp_path, monkeypatch):
    """Under torchrun the ranks would race on the probe file and on removing the folders it created."""
    monkeypatch.setenv("RANK", "1")
    runtime.check_output_dir(tmp_path / "a" / "b", False, runtime.FINAL_CHECKPOINT)
    assert not (tmp_path / "a").exists()
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(runtime.UsageError, match="cannot write"):
        runtime.check_output_dir(tmp_path / "a_file" / "out", False, runtime.FINAL_CHECKPOINT)


def test_the_same_evaluation_twice_gives_identical_files(synthetic_dir, sft_final, tmp_path):
    outputs = []
    for name in ("first", "second"):
        inference.evaluate(base_model="tiny", resume_from_checkpoint=sft_final, dataset=str(synthetic_dir),
                           output_dir=str(tmp_path / name), max_samples=24, batch_size=8)
        outputs.append(tmp_path / name)
    first, second = ((out / "predictions.jsonl").read_bytes() for out in outputs)
    assert first == second and len(first.splitlines()) == 24
    metrics = [json.loads((out / inference.METRICS_FILE).read_text()) for out in outputs]
    for m in metrics:
        m.pop("seconds")
    assert metrics[0] == metrics[1]


def _evaluation_files(out: Path) -> tuple[bytes, dict]:
    metrics = json.loads((out / inference.METRICS_FILE).read_text())
    metrics.pop("seconds")
    return (out / inference.PREDICTIONS_FILE).read_bytes(), metrics


def test_an_interrupted_evaluation_continues_after_its_last_chunk(synthetic_dir, sft_final, tmp_path, monkeypatch):
    run = dict(base_model="tiny", resume_from_checkpoint=sft_final, dataset=str(synthetic_dir), max_samples=24,
               batch_size=4, chunk_size=8)
    inference.evaluate(output_dir=str(tmp_path / "whole"), **run)
    original, calls = inference.evaluate_records, []

    def dies_at_the_third_chunk(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "evaluate_records", dies_at_the_third_chunk)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        inference.evaluate(output_dir=str(out), **run)
    assert sorted(p.name for p in (out / inference.PARTIAL_DIR).glob("chunk-*")) == ["chunk-00000.json", "chunk-00001.json"]
    assert not (out / inference.METRICS_FILE).exists()
    calls.clear()
    monkeypatch.setattr(inference, "evaluate_records", lambda *a, **k: (calls.append(len(a[2])), original(*a, **k))[1])
    inference.evaluate(output_dir=str(out), **run)
    assert calls == [8]  # only the chunk that was lost
    assert _evaluation_files(out) == _evaluation_files(tmp_path / "whole")
    assert not (out / inference.PARTIAL_DIR).exists()


def test_chunks_of_an_evaluation_with_other_flags_are_discarded(synthetic_dir, sft_final, tmp_path, monkeypatch):
    run = dict(base_model="tiny", resume_from_checkpoint=sft_final, dataset=str(synthetic_dir), max_samples=16,
               batch_size=4, chunk_size=8)
    out = tmp_path / "eval"
    stale = out / inference.PARTIAL_DIR
    stale.mkdir(parents=True)
    (stale / "flags.json").write_text(json.dumps({"seed": 99}))
    (stale / "chunk-00000.json").write_text(json.dumps({"seconds": 1.0, "rows": [{"bogus": True}] * 8}))
    metrics = inference.evaluate(output_dir=str(out), **run)
    rows = [json.loads(line) for line in (out / inference.PREDICTIONS_FILE).read_text().splitlines()]
    assert len(rows) == 16 and not any("bogus" in row for row in rows) and metrics["n"] == 16
    assert [row["index"] for row in rows] == list(range(16))


def test_kill_9_during_evaluation_then_rerun_gives_the_uninterrupted_files(synthetic_dir, sft_final, tmp_path):
    command = [sys.executable, "inference.py", "--base_model", "tiny", "--resume_from_checkpoint", sft_final,
               "--dataset", str(synthetic_dir), "--max_samples", "48", "--batch_size", "2", "--chunk_size", "4",
               "--generation", "True", "--ranking", "True"]
    subprocess.run([*command, "--output_dir", str(tmp_path / "whole")], cwd=REPO, check=True, capture_output=True,
                   timeout=600)
    out = tmp_path / "killed"
    _kill_9_when([*command, "--output_dir", str(out)], out / inference.PARTIAL_DIR / "chunk-00002.json")
    assert not (out / inference.METRICS_FILE).exists()
    done = len(list((out / inference.PARTIAL_DIR).glob("chunk-*.json")))
    assert 3 <= done < 12
    result = subprocess.run([*command, "--output_dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{done} of 12 chunks already done" in result.stderr
    assert _evaluation_files(out) == _evaluation_files(tmp_path / "whole")


def test_kill_9_during_preference_training_then_resume_gives_the_uninterrupted_adapter(synthetic_dir, sft_final,
                                                                                          tmp_path):
    """A real kill -9 at a moment after the first checkpoint, then `--resume_training True`."""
    command = [sys.executable, "softmax_dpo.py", "--model_name", "tiny", "--dataset", str(synthetic_dir),
               "--resume_from_checkpoint", sft_final, "--neg_num", "3", "--learning_rate", "1e-3",
               "--batch_size", "4", "--max_steps", "12", "--eval_step", "3", "--max_eval_samples", "8"]
    subprocess.run([*command, "--output_dir", str(tmp_path / "whole")], cwd=REPO, check=True, capture_output=True,
                   timeout=600)
    out = tmp_path / "killed"
    _kill_9_when([*command, "--output_dir", str(out)], out / "checkpoint-3", 0.05)  # during step 4
    assert not (out / runtime.FINAL_CHECKPOINT).exists()
    result = subprocess.run([*command, "--output_dir", str(out), "--resume_training", "True"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_tensors(_tensors(out / "checkpoint-12"), _tensors(tmp_path / "whole" / "checkpoint-12"))
    _assert_same_tensors(_tensors(out / runtime.FINAL_CHECKPOINT),
                         _tensors(tmp_path / "whole" / runtime.FINAL_CHECKPOINT))
    assert not list(out.glob("*.tmp")) and not list(out.glob("tmp-checkpoint-*"))


def test_a_full_disk_mid_run_is_one_line(capsys):
    def fills_the_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/checkpoint-40/optimizer.pt")

    with pytest.raises(SystemExit) as stop:
        runtime.main(fills_the_disk)
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: /data/out/checkpoint-40/optimizer.pt: No space left on device (nothing half-written was kept)"]


def test_sft_killed_with_kill_9_or_crashing_mid_checkpoint_resumes_to_the_same_adapter(synthetic_dir, tmp_path,
                                                                                        monkeypatch):
    command = [sys.executable, "sft.py", "--model_name", "tiny", "--dataset", str(synthetic_dir), "--batch_size", "4",
               "--max_steps", "12", "--eval_step", "3", "--max_eval_samples", "8", "--learning_rate", "3e-3"]
    subprocess.run([*command, "--output_dir", str(tmp_path / "whole")], cwd=REPO, check=True, capture_output=True,
                   timeout=600)
    expected = _tensors(tmp_path / "whole" / "checkpoint-12")
    # 1. kill -9 at the step after the first checkpoint
    out = tmp_path / "killed"
    _kill_9_when([*command, "--output_dir", str(out)], out / "checkpoint-3")
    assert not (out / runtime.FINAL_CHECKPOINT).exists()
    subprocess.run([*command, "--output_dir", str(out), "--resume_from_checkpoint", "True"], cwd=REPO, check=True,
                   capture_output=True, timeout=600)
    _assert_same_tensors(_tensors(out / "checkpoint-12"), expected)
    # 2. a crash in the middle of writing checkpoint-6 (weights written, optimizer not yet)
    from transformers import Trainer

    crashed = tmp_path / "crashed"
    original = Trainer._save_optimizer_and_scheduler

    def dies_at_step_6(self, output_dir):
        if self.state.global_step == 6:
            raise KeyboardInterrupt("killed while writing a checkpoint")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", dies_at_step_6)
    run = dict(model_name="tiny", dataset=str(synthetic_dir), batch_size=4, max_steps=12, eval_step=3,
               max_eval_samples=8, learning_rate=3e-3)
    with pytest.raises(KeyboardInterrupt):
        sft.train(output_dir=str(crashed), **run)
    assert (crashed / "tmp-checkpoint-6").exists() and not (crashed / "checkpoint-6").exists()
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", original)
    sft.train(output_dir=str(crashed), resume_from_checkpoint=True, **run)
    sft.train(output_dir=str(tmp_path / "whole_in_process"), **run)  # same process, same thread settings
    _assert_same_tensors(_tensors(crashed / "checkpoint-12"), _tensors(tmp_path / "whole_in_process" / "checkpoint-12"))
    assert not list(crashed.glob("tmp-checkpoint-*"))
