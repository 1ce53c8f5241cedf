"""What every stage script shares: input checks, output-dir safety, logging/wandb, model set-up.

Stage scripts (`sft.py`, `dpo.py`, `softmax_dpo.py`, `inference.py`) stay thin: they parse flags with
fire, call `check_*` before anything heavy is loaded, then build data and models through here.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import data_interface as di
import hardware
import models

logger = logging.getLogger("sdpo")
FINAL_CHECKPOINT = "final_checkpoint"


WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class UsageError(ValueError):
    """A bad flag value; reported as one line."""


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns at import, on some CPUs, that its optional hub-downloaded kernels are missing; the
    # project never downloads code at run time, and the warning would break the one-line error contract.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    quiet_progress_bars_in_logs()


def progress_bars_wanted() -> bool:
    """Progress bars only on a terminal (they go to stderr): in a log file each of their carriage-return
    updates is kept, thousands per epoch."""
    return sys.stderr.isatty()


def progress_bar(iterable, description: str, enabled: bool = True, **tqdm_options):
    """`iterable` with a tqdm progress bar when `enabled` and stderr is a terminal, else as it is."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, disable=not (enabled and progress_bars_wanted()), **tqdm_options)


def quiet_progress_bars_in_logs() -> None:
    """When stderr is not a terminal, turn off the libraries' progress bars (transformers' weight loading and
    saving, datasets, the hub); the Trainer's own bars follow `disable_tqdm` (`training_schedule_arguments`)."""
    if progress_bars_wanted():
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub and transformers are imported
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()
    if "transformers" in sys.modules:
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def main(function) -> None:
    """Run a stage's fire CLI; bad input ends with one `error:` line and exit code 1, no traceback."""
    import fire

    setup_logging()
    from trainer.non_finite import NonFiniteError

    try:
        fire.Fire(function, serialize=lambda result: None)
    except (di.DataError, UsageError, NonFiniteError, hardware.DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        # A full disk or a folder that became unwritable mid-run: every write goes through a temporary name,
        # so nothing half-written is left; say where it failed in one line.
        print(f"error: {error.filename or 'a write'}: {error.strerror} (nothing half-written was kept)", file=sys.stderr)
        sys.exit(1)


def check_output_dir(output_dir: str | Path, overwrite: bool, finished_marker: str) -> Path:
    """Refuse an output dir that already holds a finished run (its `finished_marker` exists)."""
    output_dir = Path(output_dir)
    if (output_dir / finished_marker).exists() and not overwrite:
        raise UsageError(
            f"{output_dir}: holds a finished run ({finished_marker} exists); "
            "pass --overwrite_output_dir to replace it or choose another --output_dir"
        )
    if is_main_process():  # under torchrun one process probes; several would race on the probe and its folders
        check_writable(output_dir)
    return output_dir


def is_main_process() -> bool:
    """True in a single-process run and in the global rank 0 of a torchrun/accelerate launch."""
    return int(os.environ.get("RANK", "0")) == 0


def record_numbers(split: Sequence[di.Record], records: Sequence[di.Record]) -> list[int]:
    """The position in `split` (the file's record number) of each of `records` (a subset of it)."""
    first: dict[di.Record, int] = {}
    for number, record in enumerate(split):
        first.setdefault(record, number)
    return [first[record] for record in records]


def check_writable(output_dir: Path) -> None:
    """Fail before any training when `output_dir` cannot be created or written (a probe file is created
    and removed): one line naming the path, instead of a crash at the first checkpoint. Folders the probe
    had to create are removed again, so a run stopped by bad input afterwards leaves nothing behind."""
    missing = next((folder for folder in [output_dir, *output_dir.parents][::-1] if not folder.exists()), None)
    probe = output_dir / ".sdpo-write-probe"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"{output_dir}: cannot write to the output folder ({error.strerror or error})") from None
    finally:
        if missing is not None and missing.is_dir():
            import shutil

            shutil.rmtree(missing, ignore_errors=True)


def checkpoint_to_continue(output_dir: Path, resume_training: bool | str) -> Path | None:
    """`--resume_training` (preference stages) / `--resume_from_checkpoint` (SFT): False (start afresh), True
    (the latest complete `checkpoint-N` in output_dir; a damaged one is skipped with a warning naming it
    and why) or a checkpoint folder (refused with one line when damaged). Returns the folder, or None."""
    from trainer.checkpoints import checkpoint_problem

    if resume_training is False or resume_training in ("", "False", "false", None):
        return None
    if resume_training is True or resume_training in ("True", "true"):
        checkpoints = sorted((p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                             key=lambda p: int(p.name.split("-")[-1]), reverse=True)
        for checkpoint in checkpoints:
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                return checkpoint
            logger.warning("%s: skipping a damaged checkpoint (%s)", checkpoint, problem)
        raise UsageError(f"{output_dir}: asked to continue from the latest checkpoint, but the folder holds no "
                         "complete checkpoint-* to continue from")
    path = Path(str(resume_training))
    problem = checkpoint_problem(path)
    if problem is not None:
        raise UsageError(f"{path}: cannot continue from this checkpoint: {problem}")
    return path


def check_checkpoint(path: str | None, flag: str = "resume_from_checkpoint") -> None:
    if path and not Path(path).exists():
        raise UsageError(f"{path}: --{flag} does not exist")


def check_eval_step(eval_step) -> int | float:
    """`--eval_step`: a whole number of steps (>= 1), or a fraction 0 < x < 1 of the run's total steps
    (the original evaluates every 0.2 of SFT and 0.1 of preference training). Returns it as an int or
    a float below 1."""
    if isinstance(eval_step, bool) or not isinstance(eval_step, (int, float)) or not eval_step > 0:
        raise UsageError(f"--eval_step must be a number of steps >= 1 or a fraction 0 < x < 1, got {eval_step!r}")
    if eval_step < 1:
        return float(eval_step)
    if eval_step != int(eval_step):
        raise UsageError(f"--eval_step must be a whole number of steps or a fraction below 1, got {eval_step!r}")
    return int(eval_step)


def check_load_in_4bit(value) -> None:
    """`--load_in_4bit` is `auto` (4-bit on CUDA, fp32 on a CPU), True (4-bit on any device) or False."""
    if value != "auto" and not isinstance(value, bool):
        raise UsageError(f"--load_in_4bit must be auto, True or False, got {value!r}")


def report_to(wandb_project: str, wandb_name: str, logging_dir: str | None = None) -> list[str]:
    """wandb when a project is given (offline unless WANDB_MODE says otherwise), else no logger.

    `logging_dir` is where wandb writes its run files (transformers 5 has no `logging_dir` argument).
    """
    if logging_dir:
        os.environ["WANDB_DIR"] = str(logging_dir)
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(logging_dir)
        Path(logging_dir).mkdir(parents=True, exist_ok=True)
    if not wandb_project:
        return []
    os.environ["WANDB_PROJECT"] = wandb_project
    os.environ.setdefault("WANDB_MODE", "offline")
    if wandb_name:
        os.environ["WANDB_NAME"] = wandb_name
    return ["wandb"]


def use_bf16(bf16: bool | None) -> bool:
    """`--bf16`: None (the default) = where the device has native bf16 (CUDA compute capability 8.0+, CPUs
    with AVX512-BF16 or AMX-BF16); True/False force it."""
    if bf16 is None:
        return hardware.bf16_supported(models.compute_device())
    return bool(bf16)


def autocast(bf16: bool | None):
    """Half-precision autocast on the compute device (bf16; fp16 on a GPU without bf16) when `use_bf16(bf16)`
    or a GPU needs fp16, else a no-op context."""
    import contextlib

    import torch

    device = models.compute_device()
    if use_bf16(bf16):
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    if bf16 is None and device == "cuda":
        return torch.autocast(device_type=device, dtype=hardware.half_dtype(device))
    return contextlib.nullcontext()


def device_training_arguments(bf16: bool | None = None) -> dict:
    """TrainingArguments that differ by device: gradient checkpointing on CUDA; bf16 autocast where
    `use_bf16` says so (on a CPU through accelerate's CPU autocast, which needs `use_cpu`), fp16 autocast on a
    GPU without bf16 unless `--bf16 False`. Weights stay fp32 (`models.load_base_model`)."""
    device = models.compute_device()
    on_cuda = device == "cuda"
    bf16_on = use_bf16(bf16)
    return {
        "bf16": bf16_on,
        "use_cpu": not on_cuda,
        "fp16": on_cuda and bf16 is None and not bf16_on,  # a GPU without bf16 (V100, T4)
        "gradient_checkpointing": on_cuda,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if on_cuda else None,
        "ddp_find_unused_parameters": False if hardware.world_size() > 1 else None,
        "dataloader_num_workers": 0,
    }


def accumulation_steps(gradient_accumulation_steps: int, effective_batch_size: int | None, batch_size: int) -> int:
    """`--effective_batch_size` (e.g. the paper's 128) sets the accumulation for this launch's processes;
    without it `--gradient_accumulation_steps` stands."""
    if effective_batch_size is None:
        return gradient_accumulation_steps
    try:
        steps = hardware.gradient_accumulation_for(effective_batch_size, batch_size, hardware.world_size())
    except hardware.DeviceError as error:
        raise UsageError(str(error)) from None
    if steps != gradient_accumulation_steps:
        logger.info("effective batch %d = batch %d x %d accumulation steps x %d processes", effective_batch_size,
                    batch_size, steps, hardware.world_size())
    return steps


def prepare_trainer_for_device(trainer) -> None:
    """Before `trainer.train()`: trainable weights in fp32 (hence fp32 optimizer state), one GPU per process,
    and a fused LM head that runs on this machine."""
    changed = models.upcast_trainable_parameters(trainer.model)
    if changed:
        logger.info("%d trainable tensors were in half precision: cast to fp32", len(changed))
    hardware.limit_to_one_gpu(trainer)
    hardware.prepare_fused_lm_head(models.compute_device())


def stage_training_arguments(output_dir: Path, batch_size: int, gradient_accumulation_steps: int,
                             learning_rate: float, num_train_epochs: float, max_steps: int, eval_step: int | float,
                             seed: int, wandb_project: str, wandb_name: str, logging_dir: str | None,
                             bf16: bool | None = None) -> dict:
    """The TrainingArguments every training stage shares, from its flags."""
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "learning_rate": learning_rate,
        "num_train_epochs": num_train_epochs,
        "max_steps": max_steps,
        "seed": seed,
        **device_training_arguments(bf16),
        **training_schedule_arguments(eval_step, wandb_name or None, report_to(wandb_project, wandb_name, logging_dir)),
    }


def training_schedule_arguments(eval_step: int | float, run_name: str | None, report: list[str]) -> dict:
    """Evaluation/saving every `eval_step` steps (a float below 1: that fraction of the total steps,
    which transformers resolves), keeping the best checkpoint by eval loss."""
    return {
        "eval_strategy": "steps",
        "eval_steps": eval_step,
        "save_strategy": "steps",
        "save_steps": eval_step,
        "save_total_limit": 2,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "logging_steps": max(1, min(10, eval_step)),  # a fractional eval_step logs every step
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,  # a float below 1 is a ratio of the total steps
        "max_grad_norm": 0.3,
        "report_to": report,
        "disable_tqdm": not progress_bars_wanted(),  # then the logged losses are printed as lines
        "run_name": run_name,
        "remove_unused_columns": False,
    }


@dataclass
class StageData:
    """Validated records of a run and its templates."""

    files: di.DataFiles
    templates: list[str]
    train: list[di.Record] | None = None
    val: list[di.Record] | None = None
    test: list[di.Record] | None = None


def load_stage_data(splits: Sequence[str], dataset: str | None, train_file: str | None = None,
                    val_file: str | None = None, test_file: str | None = None,
                    prompt_path: str | None = None) -> StageData:
    """Resolve, read and validate the splits a stage needs and its prompt templates."""
    files = di.resolve_data_files(dataset, train_file, val_file, test_file, prompt_path, splits)
    data = StageData(files=files, templates=di.load_templates(files.prompt))
    for split in splits:
        setattr(data, split, di.load_records(getattr(files, split)))
    return data


def records_for_steps(records: Sequence[di.Record], max_steps: int, batch_size: int,
                      gradient_accumulation_steps: int, seed: int) -> list[di.Record]:
    """The training records a run will consume: all of them, or with `max_steps > 0` a seeded random
    sample (in file order) of the `max_steps x batch x accumulation x processes` records those steps
    draw. Only these are tokenized, so a 10-step run does not tokenize a 30,000-record split."""
    processes = hardware.world_size()
    needed = max_steps * batch_size * gradient_accumulation_steps * processes
    if max_steps <= 0 or needed >= len(records):
        return list(records)
    chosen = sorted(random.Random(seed).sample(range(len(records)), needed))
    logger.info("max_steps=%d: training on %d of %d records (%d processes)", max_steps, needed, len(records), processes)
    return [records[i] for i in chosen]


def tiny_corpus(data: StageData, seed: int) -> tuple[list[str], list[str]]:
    """Text and item names the tiny tokenizer is trained on: the training prompts and every item name."""
    records = [r for split in (data.train, data.val, data.test) if split for r in split]
    texts = [row["prompt"] + row["completion"] for row in di.build_sft_rows(records[:4000], data.templates, seed)]
    names = {name for r in records for name in (*r.history, *r.candidates)}
    return texts, sorted(names)


def is_full_model(checkpoint: str | None) -> bool:
    """True for a checkpoint holding a whole model (from `--full_finetune`), not a LoRA adapter."""
    return bool(checkpoint) and (Path(checkpoint) / "config.json").exists() and not (
        Path(checkpoint) / "adapter_config.json").exists()


def base_model_path(model_name: str, checkpoint: str | None, data: StageData, seed: int) -> str:
    """Folder of the base model: a full-model checkpoint itself; for an adapter, the base it was trained on.

    An adapter names its base. When that folder is not here (outputs moved, another working directory),
    `model_name` stands in only where it is that model: the same hub id, the same cached tiny or SmolLM2 model,
    or a local folder the user names. Otherwise evaluating would put the adapter on another model (a LoRA
    trained on a full SFT model, evaluated on an untrained tiny one): that is a `UsageError`."""
    if is_full_model(checkpoint):
        return str(checkpoint)
    recorded = None
    if checkpoint and (Path(checkpoint) / "adapter_config.json").exists():
        recorded = json.loads((Path(checkpoint) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if recorded and Path(recorded, "config.json").exists():
            return recorded
        if Path(model_name, "config.json").exists():
            return model_name
    resolved = models.resolve_model_path(model_name, tiny_corpus(data, seed) if model_name in models.TINY_MODELS else None)
    cached = model_name in (*models.TINY_MODELS, models.SMOLLM2)  # a folder named by its contents
    if recorded and recorded not in (model_name, resolved) and not (cached and Path(recorded).name == Path(resolved).name):
        raise UsageError(f"{checkpoint} is an adapter on {recorded}, which is not here, and --base_model {model_name} is "
                         f"another model ({resolved}): pass the folder of {recorded} as --base_model")
    return resolved


def tokenizer_path(base: str, checkpoint: str | None) -> str:
    """The tokenizer saved with a checkpoint if any, else the base model's."""
    if checkpoint and (Path(checkpoint) / "tokenizer_config.json").exists():
        return checkpoint
    return base


def save_json(path: Path, payload: dict) -> None:
    """Write JSON through a temporary file so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def save_final_checkpoint(trainer, tokenizer, output_dir: Path) -> Path:
    """Write `output_dir/final_checkpoint` (weights and tokenizer) under a staging name and rename it when
    whole: a crash or a full disk during the save leaves no partial final checkpoint (and the previous
    one, when a run is repeated with --overwrite_output_dir, stays until the new one is complete)."""
    import shutil

    final = Path(output_dir) / FINAL_CHECKPOINT
    staging = final.with_name(FINAL_CHECKPOINT + ".tmp")
    if trainer.args.should_save:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # no process writes into the staging folder before it is emptied
    trainer.save_model(str(staging))
    if trainer.args.should_save:
        tokenizer.save_pretrained(str(staging))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    trainer.accelerator.wait_for_everyone()  # every process returns with the final checkpoint in place
    return final


def save_run_info(output_dir: Path, flags: dict, seconds: float) -> None:
    """Record a finished stage's flags and wall time in `output_dir/run_info.json` (main process only)."""
    if is_main_process():
        save_json(Path(output_dir) / "run_info.json", {"flags": flags, "seconds": round(seconds, 1)})
