"""Checkpoints that are complete or absent, and a check that tells a complete one from a damaged one.

`AtomicCheckpoints` is a mixin for `transformers.Trainer` subclasses: each `checkpoint-N` is written as
`tmp-checkpoint-N` (weights, optimizer, scheduler, RNG states, trainer state) and renamed when whole, so
a run killed during a save leaves the previous checkpoints and, at most, a `tmp-checkpoint-*` folder
that nothing reads (`transformers.trainer_utils.get_last_checkpoint` and `checkpoint_problem` only
consider `checkpoint-N`). `checkpoint_problem` finds what a copy or a disk fault can still damage: a
missing trainer state, a truncated weights file (its safetensors header must cover the file) or a
truncated optimizer state (a torch zip archive).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

STAGING_PREFIX = "tmp-checkpoint"
WEIGHTS_FILES = ("adapter_model.safetensors", "model.safetensors")


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a training checkpoint folder cannot be continued from, or None when it is complete."""
    folder = Path(folder)
    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "trainer_state.json is missing or unreadable"
    weights = [folder / name for name in WEIGHTS_FILES if (folder / name).exists()]
    if not weights:
        return f"no weights file ({' or '.join(WEIGHTS_FILES)})"
    from safetensors import SafetensorError, safe_open

    for path in weights:
        try:
            with safe_open(str(path), "pt") as handle:
                list(handle.keys())
        except (SafetensorError, OSError) as error:
            return f"{path.name} is damaged ({str(error).splitlines()[0]})"
    for name in ("optimizer.pt", "scheduler.pt"):
        path = folder / name
        if path.exists() and not zipfile.is_zipfile(path):
            return f"{name} is damaged (not a complete torch archive)"
    return None


class AtomicCheckpoints:
    """Mixin: write each checkpoint under a staging name and rename it when complete."""

    def _save_checkpoint(self, model, trial):
        import transformers.trainer as hf_trainer
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        step = self.state.global_step
        run_dir = Path(self._get_output_dir(trial=trial))
        final, staging = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{step}", run_dir / f"{STAGING_PREFIX}-{step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        # Under DDP every process writes its RNG state into the staging folder: none may start before it is
        # emptied, and the main process renames it only once all have written.
        self.accelerator.wait_for_everyone()
        # The parent names the folder from this module-level prefix; point it at the staging name.
        hf_trainer.PREFIX_CHECKPOINT_DIR = STAGING_PREFIX
        try:
            super()._save_checkpoint(model, trial)
        finally:
            hf_trainer.PREFIX_CHECKPOINT_DIR = PREFIX_CHECKPOINT_DIR
        # The parent recorded the best checkpoint under its staging name; record the final name instead.
        best_step = self.state.best_global_step
        if best_step and (best_step == step or (run_dir / f"{PREFIX_CHECKPOINT_DIR}-{best_step}").exists()):
            self.state.best_model_checkpoint = str(run_dir / f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self.state.save_to_json(str(staging / "trainer_state.json"))
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
