"""Progress bars only on a terminal: a run whose output is redirected to a log file writes no carriage-return
updates (`python -m baselines ... > log 2>&1` used to write thousands per epoch), and a terminal still gets them."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import tty
from pathlib import Path

import runtime
from conftest import REPO


def run_to_log(command: list[str], log: Path) -> bytes:
    """Run `command` from the repository root with stdout and stderr redirected to the file `log`."""
    with log.open("wb") as sink:
        result = subprocess.run(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, timeout=600, check=False)
    output = log.read_bytes()
    assert result.returncode == 0, output[-3000:].decode(errors="replace")
    return output


def test_baselines_write_no_progress_bar_to_a_log(synthetic_dir, tmp_path):
    log = run_to_log([sys.executable, "-m", "baselines", "--dataset", str(synthetic_dir), "--model", "gru4rec",
                      "--epochs", "3", "--patience", "3", "--batch_size", "16", "--threads", "1",
                      "--output_dir", str(tmp_path / "out")], tmp_path / "baselines.log")
    assert log.count(b"\r") == 0
    assert b"gru4rec epoch 1: train loss" in log  # each epoch is still one log line


def test_stages_write_no_progress_bar_to_a_log(synthetic_dir, tmp_path):
    common = ["--dataset", str(synthetic_dir), "--batch_size", "4", "--overwrite_output_dir"]
    sft_log = run_to_log([sys.executable, "sft.py", "--model_name", "tiny", "--output_dir", str(tmp_path / "sft"),
                          "--max_steps", "4", "--eval_step", "2", "--max_train_samples", "16",
                          "--max_eval_samples", "4", *common], tmp_path / "sft.log")
    eval_log = run_to_log([sys.executable, "inference.py", "--base_model", "tiny", "--resume_from_checkpoint",
                           str(tmp_path / "sft" / runtime.FINAL_CHECKPOINT), "--output_dir", str(tmp_path / "eval"),
                           "--max_samples", "4", *common], tmp_path / "eval.log")
    # The Trainer's, transformers' (loading and saving weights) and the evaluation's bars are all off.
    assert sft_log.count(b"\r") == 0 and eval_log.count(b"\r") == 0
    assert b"{'loss': " in sft_log  # the Trainer prints its logged losses as lines instead


def read_available(fd: int) -> bytes:
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks)


def test_progress_bars_still_show_on_a_terminal(monkeypatch):
    controller, terminal_fd = pty.openpty()
    tty.setraw(terminal_fd)  # no newline translation: every "\r" read back was written by the bar
    fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # tqdm fits the bar to the width
    with os.fdopen(terminal_fd, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        assert runtime.progress_bars_wanted()
        for _ in runtime.progress_bar(range(3), "counting"):
            pass
        terminal.flush()
        shown = read_available(controller)
    os.close(controller)
    assert b"counting" in shown and shown.count(b"\r") >= 2
