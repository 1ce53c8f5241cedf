"""The paper's experiments as one resumable matrix: Table 1, the negatives and beta sweeps, training curves.

    bash reproduce.sh                                   # profile cpu on LastFM
    python reproduce.py --profile cpu --dataset lastfm  # the same, without the set-up
    python reproduce.py --profile paper --dry_run       # print the paper-scale commands (NPROC GPUs)

Measured times of the cpu profile with --jobs 2 on 2 cores: SmolLM2 on LastFM 29.5 min as one run; the tiny
plan on LastFM about 3.5 hours (its cells' own times: 424 min of one core); on MovieLens its Table 1 with one
preference seed per SFT model (`--cells`, 20 of 54 cells) 99.2 min as one run; tiny-bpe's 22 cells take 135 min
of one core (its preference and evaluation cells 43.4 min as one call).

A profile is a list of model plans (`PROFILES` below). Each plan expands into *cells*: one stage run
(SFT, DPO, S-DPO with N negatives and beta, one seed) or one evaluation, each a plain command of the
stage scripts. Cells run one after another in a subprocess; a finished cell leaves a record in
`<output_root>/cells/<cell>.json` (written atomically after its output is complete), so a rerun skips it
(unless its command was edited or a cell it needs ran again since: then it runs again, and so do the
cells made from it) and a killed run loses at most the cell in progress; a training cell continues from its last complete
checkpoint (when its command is unchanged), an evaluation from its last saved chunk. A failing cell is
reported and its dependants are skipped; the other cells go on. `--jobs N` runs cells in N processes at
once, each pinned to its share of the CPU cores; they claim cells with lock files and wait for the cells
the next ones need (several harnesses started by hand on one output root cooperate the same way).

At the end (and with `--report_only`) the finished cells are collected into `results/<dataset>/<model>/`:
`table.md` and `table.csv` (Table 1: mean ± std over seeds), `results.json` (every number with its
config, seed, command, wall time, git commit and `git_dirty`: whether tracked files differed from that
commit; the whole run's wall time), `per_prompt.csv.gz` (every evaluation's per-prompt target ranks, from
which the paired differences recompute: `recompute_paired_differences`) and PNG figures: HR@1 against
the number of negatives and against beta, and DPO vs S-DPO training curves (rewards, margin, chosen
log-prob). table.md is a function of results.json alone (`format_report`); a report written by an older
version is redrawn with `python -c "import reproduce; reproduce.rewrite_report('results/lastfm-original/tiny')"`.
"""

from __future__ import annotations

import calendar
import csv
import fcntl
import fnmatch
import gzip
import hashlib
import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import data_interface as di
import hardware
import runtime

logger = logging.getLogger("sdpo.reproduce")
REPO = Path(__file__).resolve().parent

# Columns of Table 1: (metrics.json key, header). Generation = the paper's metric; ranking = the
# target's rank among the 20 candidates by log-prob (no valid output needed).
COLUMNS = (
    ("hr@1", "HR@1 (gen)"),
    ("valid_ratio", "ValidRatio (gen)"),
    ("rank_hr@1", "HR@1 (rank)"),
    ("rank_ndcg@5", "NDCG@5 (rank)"),
    ("rank_mrr", "MRR (rank)"),
    ("constrained_hr@1", "HR@1 (gen, constrained)"),  # shown only where an evaluation ran --constrained_decoding
    ("constrained_valid_ratio", "ValidRatio (gen, constrained)"),
)


def shown_columns(rows: list[dict]) -> list[tuple[str, str]]:
    """The columns some row has (a table without constrained evaluations keeps its old columns)."""
    return [(key, label) for key, label in COLUMNS if any(key in row for row in rows)]


@dataclass
class ModelPlan:
    """One model's share of a profile: its stage flags, seeds, sweeps and evaluation sample."""

    model_name: str
    tag: str  # folder name under results/<dataset>/
    sft: dict  # flags of sft.py (besides model, data, output, seed)
    preference: dict  # flags shared by dpo.py / softmax_dpo.py
    sft_seeds: tuple[int, ...] = (0,)
    preference_seeds: tuple[int, ...] = (0, 1, 2)
    main_negatives: int = 3  # the S-DPO row of Table 1
    negatives: tuple[int, ...] = (1, 3)  # sweep at beta = 1 (1 = DPO)
    negatives_seeds: tuple[int, ...] = (0,)  # seeds of sweep points that are not Table 1 rows
    betas: tuple[float, ...] = (1.0,)  # sweep at main_negatives
    eval: dict = field(default_factory=dict)  # flags of inference.py (max_samples, generation, batch_size)
    eval_seed: int = 0  # selects the evaluation sample: the same prompts for every row
    distributed: bool = False  # training and evaluation under torchrun, one process per GPU (NPROC)
    baselines: tuple[str, ...] = ("gru4rec", "caser", "sasrec")  # conventional recommenders (python -m baselines)
    baseline_flags: dict = field(default_factory=dict)  # extra flags of `python -m baselines` (e.g. epochs)


# When does S-DPO help: the same LLaMA with item names as multi-token BPE text (random tied embeddings; its one
# SFT epoch makes an item prior, not a recommender: docs/measurements.md), scored by generation (the paper's
# metric, also constrained to the candidates) and ranking; DPO and S-DPO N = 3 and 15 at 3 seeds each.
TINY_BPE = ModelPlan(
    model_name="tiny-bpe", tag="tiny-bpe",
    sft=dict(full_finetune=True, batch_size=32, num_train_epochs=1, max_steps=-1, learning_rate=1e-3,
             eval_step=0.25, max_eval_samples=512, tie_word_embeddings=True),
    # 150 steps, not tiny's 600: a step costs about 4 times tiny's (prompts of ~250 tokens, names of ~6),
    # and 9 runs of 600 did not fit one session on 2 cores (docs/measurements.md).
    preference=dict(full_finetune=True, batch_size=16, max_steps=150, learning_rate=5e-4, eval_step=150,
                    max_eval_samples=256),
    preference_seeds=(0, 1, 2), main_negatives=15, negatives=(1, 3, 15), negatives_seeds=(0, 1, 2),
    betas=(1.0,), eval=dict(max_samples=3000, batch_size=32, constrained_decoding=True),
)
# The same plan from a longer SFT whose name pieces start from SASRec: each piece of a name gets the mean
# SASRec vector of the names it occurs in (item_init.name_token_rows, the tiny recipe's start for names of
# several tokens), 4 epochs. bf16 autocast is pinned rather than left to the CPU's flags (`--bf16` None), so
# every machine trains with the same numerics (1.75 times fp32's speed on one core with AMX-BF16, the same loss
# over 12 steps; emulated and slower on a CPU without bf16). Three SFT models, from each DPO and S-DPO N = 15 at
# preference seed 0 (Table 1, paired per SFT model); from the first, N = 1, 3, 15 at seeds 0-2. The committed
# results/lastfm/tiny-bpe-sasrec/ holds the first SFT model's cells only (its results.json's plan).
TINY_BPE_SASREC = replace(TINY_BPE, tag="tiny-bpe-sasrec",
                          sft={**TINY_BPE.sft, "num_train_epochs": 4, "eval_step": 0.125, "bf16": True,
                               "item_embeddings": "sasrec"},
                          sft_seeds=(0, 1, 2), preference_seeds=(0,))


PROFILES: dict[str, list[ModelPlan]] = {
    # For 2 CPU cores: the tiny LLaMA (one token per item, trained in full from scratch) carries the ranking
    # columns, the sweeps and the seeds; SmolLM2-135M (pretrained) and tiny-bpe (multi-token item names, also
    # constrained to the candidates) carry the generation columns on a random sample of test prompts.
    "cpu": [
        ModelPlan(
            model_name="tiny", tag="tiny",
            # One epoch at lr 1e-3, tied embeddings, item tokens from a SASRec trained on the training split
            # (item_init.py): the recipe of docs/recipe_study.md, the one whose SFT model read the user's history
            # at every seed tried (the former 4 epochs at lr 3e-3 did at one seed and not at another).
            sft=dict(full_finetune=True, batch_size=32, num_train_epochs=1, max_steps=-1, learning_rate=1e-3,
                     eval_step=0.25, max_eval_samples=512, tie_word_embeddings=True, item_embeddings="sasrec"),
            # 600 steps of 16 at lr 5e-4: at 150 steps of lr 1e-4 S-DPO and DPO were within the seed spread
            # (docs/measurements.md, "A stronger preference stage"); measured from the former SFT recipe.
            preference=dict(full_finetune=True, batch_size=16, max_steps=600, learning_rate=5e-4, eval_step=600,
                            max_eval_samples=256),
            sft_seeds=(0, 1, 2), preference_seeds=(0, 1, 2), main_negatives=15,
            negatives=(1, 3, 7, 15), betas=(0.5, 1.0, 2.0, 5.0),
            eval=dict(generation=False, batch_size=64),  # the whole test split (14,062 prompts on LastFM)
        ),
        ModelPlan(
            model_name="smollm2-135m", tag="smollm2-135m",
            sft=dict(batch_size=8, max_steps=40, learning_rate=3e-4, eval_step=40, max_eval_samples=32),
            preference=dict(batch_size=4, max_steps=30, learning_rate=1e-4, eval_step=30, max_eval_samples=32),
            preference_seeds=(0, 1, 2), negatives=(1, 3), betas=(1.0,),  # 3 seeds: the spread of its rows
            eval=dict(max_samples=500, batch_size=16),
        ),
        TINY_BPE,
        TINY_BPE_SASREC,
    ],
    # The paper's setting (Llama-2-7B, 4-bit NF4 + LoRA, effective batch 128 = 4 per GPU x accumulation x NPROC
    # GPUs; the paper used 4): not run here; `--dry_run` prints its commands.
    "paper": [
        ModelPlan(
            model_name="meta-llama/Llama-2-7b-hf", tag="llama-2-7b",
            sft=dict(batch_size=4, effective_batch_size=128, learning_rate=1e-5, num_train_epochs=5,
                     max_steps=-1, eval_step=0.2, max_eval_samples=2000),
            preference=dict(batch_size=4, effective_batch_size=128, learning_rate=1e-5, num_train_epochs=3,
                            max_steps=-1, eval_step=0.1, max_eval_samples=2000),
            preference_seeds=(0,), negatives=(1, 3, 7, 15), betas=(0.5, 1.0, 2.0, 5.0),
            eval=dict(batch_size=32),
            distributed=True,
        ),
    ],
    # A few steps of everything on the synthetic data: the test suite's run of the harness.
    "smoke": [
        ModelPlan(
            model_name="tiny", tag="tiny",
            sft=dict(full_finetune=True, batch_size=8, max_steps=4, learning_rate=3e-3, eval_step=4,
                     max_eval_samples=8),
            preference=dict(full_finetune=True, batch_size=4, max_steps=2, learning_rate=1e-4, eval_step=2,
                            max_eval_samples=8),
            preference_seeds=(0,), negatives=(1, 3), betas=(1.0, 2.0),
            eval=dict(max_samples=24, batch_size=8), baselines=("gru4rec", "sasrec"), baseline_flags=dict(epochs=2),
        ),
    ],
}


# ----------------------------------------------------------------------------------------------
# Cells


@dataclass
class Cell:
    """One command of the matrix; finished when its record exists and is current (`current_record`)."""

    name: str
    kind: str  # sft | preference | eval
    command: list[str]
    output: Path  # the stage's output_dir
    needs: tuple[str, ...] = ()
    info: dict = field(default_factory=dict)  # method, seed, negatives, beta, ... for the report
    root: Path | None = None  # the matrix folder of its records, logs and locks (None: run_cells' root)
    data: str = ""  # dataset_fingerprint of the data it runs on ("" where the folder is not prepared: unchecked)


def _flags(values: dict) -> list[str]:
    return [f"--{key}={value}" for key, value in values.items() if value is not None]


def process_count() -> int:
    """`NPROC` if set, else one process per visible GPU (1 without CUDA)."""
    value = os.environ.get("NPROC", "").strip()
    if not value:
        return hardware.default_process_count()
    if not value.isdigit() or int(value) < 1:
        raise runtime.UsageError(f"NPROC={value!r}: must be a whole number of processes >= 1")
    return int(value)


def stage_flags(flags: dict, processes: int) -> list[str]:
    """A stage's flags with `effective_batch_size` turned into the accumulation steps for `processes`
    (written out, so a dry run shows batch x accumulation x processes)."""
    flags = dict(flags)
    effective = flags.pop("effective_batch_size", None)
    if effective is not None:
        try:
            flags["gradient_accumulation_steps"] = hardware.gradient_accumulation_for(effective, flags["batch_size"],
                                                                                      processes)
        except hardware.DeviceError as error:
            raise runtime.UsageError(str(error)) from None
    return _flags(flags)


def preference_name(negatives: int, beta: float, seed: int, sft_seed: int | None = None) -> str:
    """`dpo-n1-b1-s0`; with `sft_seed` (plans with several SFT seeds) `...-sft1`: the SFT model it starts from."""
    method = "dpo" if negatives == 1 else "sdpo"
    return f"{method}-n{negatives}-b{beta:g}-s{seed}" + (f"-sft{sft_seed}" if sft_seed is not None else "")


def table_runs(plan: ModelPlan, negatives: int) -> list[str]:
    """The Table 1 runs of DPO (1) or S-DPO (main negatives): every preference seed from every SFT seed,
    SFT seed by SFT seed."""
    several = len(plan.sft_seeds) > 1
    return [preference_name(negatives, 1.0, seed, sft_seed if several else None)
            for sft_seed in plan.sft_seeds for seed in plan.preference_seeds]


def plan_cells(plan: ModelPlan, dataset: str, root: Path, python: str = sys.executable) -> list[Cell]:
    """Every cell of one model plan, in run order: each SFT, the untrained model's evaluation, the baselines,
    each SFT model's evaluation, then the preference runs (Table 1's first) and theirs."""
    data = ["--dataset", dataset]
    processes = process_count() if plan.distributed else 1
    train = [python] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                        if processes > 1 else [])
    cells: list[Cell] = []

    def evaluation(name: str, checkpoint: Path | None, needs: tuple[str, ...], info: dict) -> Cell:
        command = [*train, "inference.py", "--base_model", plan.model_name, *data,
                   "--output_dir", str(root / "eval" / name), "--overwrite_output_dir",
                   f"--seed={plan.eval_seed}", *_flags(plan.eval)]
        if checkpoint is not None:
            command += ["--resume_from_checkpoint", str(checkpoint / runtime.FINAL_CHECKPOINT)]
        return Cell(f"eval-{name}", "eval", command, root / "eval" / name, needs, {**info, "trained": name})

    # SFT first: every other model cell waits for it, so a second worker takes the independent cells meanwhile.
    for sft_seed in plan.sft_seeds:
        name = f"sft-s{sft_seed}"
        out = root / name
        command = [*train, "sft.py", "--model_name", plan.model_name, *data, "--output_dir", str(out),
                   "--overwrite_output_dir", f"--seed={sft_seed}", *stage_flags(plan.sft, processes)]
        cells.append(Cell(name, "sft", command, out, (), {"method": "sft", "seed": sft_seed}))
    cells.append(evaluation("base", None, (), {"method": "base"}))
    if plan.baselines:  # conventional recommenders, ranked over the same candidates of the same test prompts
        out = root / "baselines"
        command = [python, "-m", "baselines", *data, "--model", ",".join(plan.baselines), "--output_dir", str(out),
                   "--overwrite_output_dir", f"--seed={plan.eval_seed}", "--progress=False",
                   *_flags({"max_samples": plan.eval.get("max_samples"), **plan.baseline_flags})]
        cells.append(Cell("baselines", "baselines", command, out, (), {"method": "baselines"}))
    for sft_seed in plan.sft_seeds:
        name = f"sft-s{sft_seed}"
        cells.append(evaluation(name, root / name, (name,), {"method": "sft", "seed": sft_seed}))

    # Table 1 rows (DPO and S-DPO at beta 1, every preference seed) from every SFT model; the sweep points
    # from the first. With one SFT seed the names carry no SFT suffix.
    several = len(plan.sft_seeds) > 1
    runs: dict[str, tuple[int, float, int, int]] = {}
    for sft_seed in plan.sft_seeds:
        for seed in plan.preference_seeds:
            for negatives in (1, plan.main_negatives):
                name = preference_name(negatives, 1.0, seed, sft_seed if several else None)
                runs[name] = (negatives, 1.0, seed, sft_seed)
    first = plan.sft_seeds[0]
    sweep = [(n, 1.0) for n in plan.negatives] + [(plan.main_negatives, beta) for beta in plan.betas]
    for negatives, beta in sweep:
        for seed in plan.negatives_seeds:
            name = preference_name(negatives, beta, seed, first if several else None)
            runs.setdefault(name, (negatives, beta, seed, first))
    table = set(table_runs(plan, 1)) | set(table_runs(plan, plan.main_negatives))
    # Table 1's runs first (preference seed by seed, each from every SFT model), then the sweep points: a run
    # cut short still fills the table.
    order = sorted(runs.items(), key=lambda item: (item[0] not in table, item[1][2], plan.sft_seeds.index(item[1][3]),
                                                   item[1][0], item[1][1]))
    for name, (negatives, beta, seed, sft_seed) in order:
        out, sft_out = root / name, root / f"sft-s{sft_seed}"
        script = "dpo.py" if negatives == 1 else "softmax_dpo.py"
        command = [*train, script, "--model_name", plan.model_name, *data,
                   "--resume_from_checkpoint", str(sft_out / runtime.FINAL_CHECKPOINT), "--output_dir", str(out),
                   "--overwrite_output_dir", f"--seed={seed}", f"--beta={beta:g}", *stage_flags(plan.preference, processes)]
        if negatives != 1:
            command.append(f"--neg_num={negatives}")
        info = {"method": "dpo" if negatives == 1 else "sdpo", "seed": seed, "negatives": negatives, "beta": beta,
                **({"sft_seed": sft_seed} if several else {})}
        cells.append(Cell(name, "preference", command, out, (sft_out.name,), info))
        cells.append(evaluation(name, out, (name,), info))
    fingerprint = dataset_fingerprint(dataset)
    for cell in cells:
        cell.root, cell.data = root, fingerprint
    return cells


def dataset_fingerprint(dataset: str) -> str:
    """A digest of the dataset's train/val/test files, "" where they are absent. A cell's record keeps the digest
    of the data it ran on, so a record made from other data (the folder prepared again, differently) is stale."""
    folder = di.dataset_dir(dataset)
    files = [folder / f"{split}.json" for split in ("train", "val", "test")]
    if not all(path.is_file() for path in files):
        return ""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Running


def _git(*args: str, cwd: Path = REPO) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def git_commit(cwd: Path = REPO) -> str:
    out = _git("rev-parse", "HEAD", cwd=cwd)
    return out.strip() if out else "unknown"


def git_dirty(cwd: Path = REPO) -> bool | None:
    """True when tracked files differ from the commit (untracked files do not count: outputs, data and
    virtual environments live in the tree); None outside a git checkout."""
    out = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return None if out is None else bool(out.strip())


def git_state(cwd: Path = REPO) -> dict:
    """{"git_commit", "git_dirty"}: what a run's numbers were computed by."""
    return {"git_commit": git_commit(cwd), "git_dirty": git_dirty(cwd)}


def _die_with_parent() -> None:
    """In the child: receive SIGKILL when the harness dies, so a killed run leaves no orphan writing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# A killed training cell continues from its last complete checkpoint instead of starting again.
RESUME_FLAGS = {"sft": "--resume_from_checkpoint=True", "preference": "--resume_training=True"}
CELL_COMMAND_FILE = "cell_command.json"  # in a cell's output folder: the command that wrote its checkpoints


def _identity(command: list[str]) -> list[str]:
    """What a command computes: everything but the interpreter's path (a matrix moved to another
    checkout or virtual environment is still the same matrix)."""
    return list(command[1:])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else ""


def current_record(cell: Cell, root: Path) -> dict:
    """The cell's record while it still stands for the cell as planned now, else {}: a record is stale when
    the cell's command changed (e.g. a profile's flag was edited), a cell it needs was run again since, or the
    dataset's files differ from those it ran on."""
    record = _read(root / "cells" / f"{cell.name}.json")
    if not record:
        return {}
    written_by = record.get("cell_command") or [part for part in record["command"]
                                                if part not in RESUME_FLAGS.values()]
    if _identity(written_by) != _identity(cell.command):
        return {}
    if record.get("data") and cell.data and record["data"] != cell.data:  # other data than the folder holds now
        return {}
    needs = record.get("needs")  # absent from records of older versions: not checked
    if needs is not None and needs != {need: _digest(root / "cells" / f"{need}.json") for need in cell.needs}:
        return {}
    return record


def command_to_run(cell: Cell) -> list[str]:
    """The cell's command, plus the stage's continue flag when its output folder holds a complete
    checkpoint written by this same command (a run that was killed); a changed command starts afresh."""
    from trainer.checkpoints import checkpoint_problem

    flag = RESUME_FLAGS.get(cell.kind)
    written_by = _read(cell.output / CELL_COMMAND_FILE).get("command")
    if flag is None or written_by is None or _identity(written_by) != _identity(cell.command):
        return cell.command
    if any(checkpoint_problem(folder) is None for folder in cell.output.glob("checkpoint-*")):
        return [*cell.command, flag]
    return cell.command


def run_cell(cell: Cell, records: Path, logs: Path, call: str | None = None) -> dict:
    """Run one cell's command (its output appended to logs/<cell>.log); returns its record, written atomically.
    `call`: the id of the reproduce call that runs it (kept in the record: which call ran which cell)."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{cell.name}.log"
    command = command_to_run(cell)
    needs = {need: _digest(records / f"{need}.json") for need in cell.needs}  # the inputs it is made from
    if cell.kind in RESUME_FLAGS:
        runtime.save_json(cell.output / CELL_COMMAND_FILE, {"command": cell.command})
    state = git_state()  # at the start: the code the cell runs, even if the tree changes while it runs
    start = time.time()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        returncode = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent).returncode
    if returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"cell {cell.name} failed (exit {returncode}): {tail[0][:300]} [log: {log}]")
    if git_state() != state:  # the tree changed while the cell ran (code may be imported late): not one commit's
        state["git_dirty"] = True
    record = {"name": cell.name, "kind": cell.kind, "command": command, "cell_command": cell.command,
              "needs": needs, "data": cell.data, "info": cell.info,
              "wall_seconds": round(time.time() - start, 1), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
              **({"call": call} if call else {}), **state}
    runtime.save_json(records / f"{cell.name}.json", record)
    return record


def _claim(locks: Path, name: str) -> int | None:
    """An exclusive lock on `locks/<name>.lock` (released when the file is closed or the process dies), or
    None when another process holds it."""
    locks.mkdir(parents=True, exist_ok=True)
    handle = os.open(locks / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        return None
    return handle


def run_cells(cells: list[Cell], root: Path | None = None, poll_seconds: float = 5.0,
              call: str | None = None) -> list[str]:
    """Run every unfinished cell once the cells it needs have finished; returns the names of the cells that
    failed or were skipped because a cell they need failed.

    A cell's records, logs and locks live under its own `root` (or this `root`), so one call can run several
    matrices (e.g. every model of a profile): a cell waiting for its matrix's SFT does not keep a worker from
    the next matrix's cells. Several harness processes may work on one matrix at once (`--jobs`, or one per
    machine on a shared disk): a process claims a cell with a lock file before running it, skips cells another
    process holds, and waits for those its next cells need. A lock dies with its process, so a killed run's
    cell is free to be claimed again. `call`: the reproduce call's id, written into each record it makes."""

    def home(cell: Cell) -> Path:
        return cell.root or root

    def key(cell: Cell) -> tuple[Path, str]:
        return home(cell), cell.name

    numbers = {key(cell): number for number, cell in enumerate(cells, 1)}
    by_key = {key(cell): cell for cell in cells}
    several = len({home(cell) for cell in cells}) > 1
    failed: set[tuple[Path, str]] = set()
    for cell in cells:
        if (home(cell) / "cells" / f"{cell.name}.json").exists() and not current_record(cell, home(cell)):
            logger.info("%s will run again: its command or a cell it needs changed since its record", cell.name)

    def label(cell_key: tuple[Path, str]) -> str:
        return f"{cell_key[0].name}/{cell_key[1]}" if several else cell_key[1]

    def finished(cell_key: tuple[Path, str]) -> bool:
        folder, name = cell_key
        if cell_key in by_key:
            return bool(current_record(by_key[cell_key], folder))
        return (folder / "cells" / f"{name}.json").exists()

    while True:
        waiting = False
        for cell in cells:
            folder = home(cell)
            if key(cell) in failed or finished(key(cell)):
                continue
            blocked = [need for need in cell.needs if (folder, need) in failed]
            if blocked:
                logger.warning("skipping %s: %s failed", label(key(cell)), ", ".join(blocked))
                failed.add(key(cell))
                continue
            ready = all(finished((folder, need)) for need in cell.needs)
            lock = _claim(folder / "locks", cell.name) if ready else None
            if lock is None:  # a cell it needs is not finished yet, or another process runs it
                waiting = True
                continue
            try:
                if finished(key(cell)):  # finished by another process since the check above
                    continue
                logger.info("[%d/%d] %s", numbers[key(cell)], len(cells), label(key(cell)))
                try:
                    record = run_cell(cell, folder / "cells", folder / "logs", call)
                except RuntimeError as error:
                    logger.error("%s", error)
                    failed.add(key(cell))
                else:
                    logger.info("[%d/%d] %s done in %.0f s", numbers[key(cell)], len(cells), label(key(cell)),
                                record["wall_seconds"])
            finally:
                os.close(lock)
            break  # look again from the top: the cell that just ended may have unblocked earlier ones
        else:
            if not waiting:
                return sorted(label(cell_key) for cell_key in failed)
            time.sleep(poll_seconds)


def cpu_slices(jobs: int) -> list[list[int]]:
    """This process's CPUs split into `jobs` contiguous, near-equal groups."""
    cpus = sorted(os.sched_getaffinity(0))
    if not 1 <= jobs <= len(cpus):
        raise runtime.UsageError(f"--jobs {jobs}: this process may use {len(cpus)} CPU(s); use 1 to {len(cpus)}")
    size, extra = divmod(len(cpus), jobs)
    bounds = [i * size + min(i, extra) for i in range(jobs + 1)]
    return [cpus[bounds[i]:bounds[i + 1]] for i in range(jobs)]


def run_in_workers(argv: list[str], jobs: int) -> int:
    """Run `reproduce.py argv` in `jobs` processes, each pinned to its own CPUs with as many threads (two
    torch jobs sharing cores slow each other down several times); returns how many of them failed."""
    workers = []
    for cpus in cpu_slices(jobs):
        threads = str(len(cpus))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        logger.info("worker on CPUs %s", ",".join(map(str, cpus)))
        workers.append(subprocess.Popen([sys.executable, str(REPO / "reproduce.py"), *argv], cwd=REPO, env=env,
                                        preexec_fn=lambda cpus=cpus: (os.sched_setaffinity(0, cpus),
                                                                      _die_with_parent())))
    return sum(worker.wait() != 0 for worker in workers)


# ----------------------------------------------------------------------------------------------
# Report


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def collect(plan: ModelPlan, cells: list[Cell], root: Path, dataset: str) -> dict:
    """Every finished cell's numbers, plus the reference rows on the same evaluation prompts.

    Per prompt (in the sample's order; `prompt_indices` = their places in the test split): `ranks` (the
    target's rank among the candidates, of every ranked evaluation, popularity and the baselines),
    `hits` (rank 1) and `gen_hits` (generation's HR@1 hit, where the evaluation generated)."""
    data = runtime.load_stage_data(("train", "test"), dataset)
    test = di.sample_records(data.test, plan.eval.get("max_samples"), plan.eval_seed)
    place = {id(record): index for index, record in enumerate(data.test)}
    references = di.reference_metrics(data.train, test)
    ranks = {"popularity": di.popularity_ranks(data.train, test)}
    gen_hits: dict[str, list[int]] = {}
    runs: dict[str, dict] = {}
    dirty: dict[str, list[bool | None]] = {}
    for cell in cells:
        record = current_record(cell, root)
        if not record:
            continue
        # Older records have no git_dirty, and it is None outside a git checkout: then it is left out.
        provenance = {key: record[key] for key in ("git_commit", "git_dirty") if record.get(key) is not None}
        if cell.kind == "baselines":
            for name in plan.baselines:
                metrics = _read(cell.output / name / inference_metrics_file())
                if metrics:
                    references[name] = {**metrics, "command": record["command"], **provenance}
                    rows = _read_jsonl(cell.output / name / inference_predictions_file())
                    if rows:
                        ranks[name] = [row["rank"] for row in rows]
            continue
        name = cell.info.get("trained", cell.name)
        entry = runs.setdefault(name, {"info": cell.info})
        if cell.kind == "eval":
            entry["metrics"] = _read(cell.output / inference_metrics_file())
            rows = _read_jsonl(cell.output / inference_predictions_file())
            if rows and all("target_rank" in row for row in rows):
                ranks[name] = [row["target_rank"] for row in rows]
            if rows and all("hit" in row for row in rows):
                gen_hits[name] = [int(row["hit"]) for row in rows]
            entry["eval_seconds"] = record["wall_seconds"]
            entry["eval_command"] = record["command"]
            if entry.get("git_commit", record["git_commit"]) != record["git_commit"]:
                entry["eval_git_commit"] = record["git_commit"]  # evaluated by other code than it was trained by
        else:
            entry["train_seconds"] = record["wall_seconds"]
            entry["config"] = _read(cell.output / "run_info.json").get("flags", {})
            entry["train_command"] = record["command"]
            entry["log_history"] = _read(cell.output / "log_history.json").get("log_history", [])
        entry.setdefault("git_commit", record["git_commit"])  # the first cell's: training, then its evaluation
        dirty.setdefault(name, []).append(record.get("git_dirty"))  # None: a record from before git_dirty
    for name, flags in dirty.items():
        if None not in flags:  # unknown for any of its cells: left out ("not recorded" in table.md)
            runs[name]["git_dirty"] = any(flags)
    return {"model": plan.model_name, "dataset": Path(dataset).name,
            "candidates": di.candidate_protocol(data.files.test.parent), "eval_records": len(test), "eval_seed": plan.eval_seed,
            "references": references, "runs": runs, "ranks": ranks, "gen_hits": gen_hits,
            "hits": {name: [int(rank == 1) for rank in values] for name, values in ranks.items()},
            "prompt_indices": [place[id(record)] for record in test]}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def inference_metrics_file() -> str:
    import inference

    return inference.METRICS_FILE


def inference_predictions_file() -> str:
    import inference

    return inference.PREDICTIONS_FILE


def method_runs(plan: ModelPlan) -> dict[str, list[str]]:
    """Table 1's trained rows and the runs (one per seed) each one averages."""
    return {
        "base (untrained)": ["base"],
        "SFT": [f"sft-s{s}" for s in plan.sft_seeds],
        "DPO": table_runs(plan, 1),
        f"S-DPO (N={plan.main_negatives})": table_runs(plan, plan.main_negatives),
    }


# results.json's keys of the paired differences by metric (generation's only where the evaluations generated).
DIFFERENCES_KEY = {"rank": "paired_differences", "generation": "paired_differences_generation"}


def paired_differences(plan: ModelPlan, collected: dict, metric: str = "rank") -> list[dict]:
    """Rank HR@1 differences between the rows of Table 1 that the paper orders, on the same prompts
    (`metric="generation"`: of generation HR@1, the paper's metric, where the evaluations generated; rows without
    generation, e.g. popularity, are left out).

    For "A − B": `per_seed` lists A's run minus B's run at each seed both have (B's single run where it has
    one, e.g. SFT or popularity; with several SFT seeds, the SFT model A's run started from); `ahead` counts
    the seeds where A is higher; `prompt_se` is the standard error of the mean per-prompt difference of A's
    and B's first runs (paired over prompts): how much the difference would move with another sample of
    test prompts, which the spread over seeds does not show. With several SFT seeds, `per_sft` holds the
    mean difference within each SFT model, `sft_mean` their mean and `sft_se` its standard error (std of
    `per_sft` / sqrt(SFT models)): it counts both the spread of preference seeds within an SFT model and that
    between SFT models; `sft_ahead` counts the SFT models where A is higher on average.
    """
    sdpo = f"S-DPO (N={plan.main_negatives})"
    groups = {**method_runs(plan), "popularity": ["popularity"]}
    hits = collected["hits"] if metric == "rank" else collected.get("gen_hits", {})
    several = len(plan.sft_seeds) > 1
    origin = {name: sft_seed for sft_seed in plan.sft_seeds  # run -> the SFT seed it started from (or is)
              for name in [f"sft-s{sft_seed}"] + [preference_name(n, 1.0, seed, sft_seed if several else None)
                                                  for n in (1, plan.main_negatives) for seed in plan.preference_seeds]}
    slot = {preference_name(n, 1.0, seed, sft_seed if several else None): (sft_seed, seed)  # run -> its seeds
            for sft_seed in plan.sft_seeds for n in (1, plan.main_negatives) for seed in plan.preference_seeds}
    comparisons = []
    for a, b in ((sdpo, "DPO"), ("DPO", "SFT"), (sdpo, "SFT"), ("SFT", "base (untrained)"), (sdpo, "popularity")):
        runs_a = [name for name in groups[a] if name in hits]
        runs_b = [name for name in groups[b] if name in hits]
        if not runs_a or not runs_b:
            continue
        if b == "SFT" and len(runs_b) > 1:  # each preference run against the SFT model it started from
            pairs = [(name, f"sft-s{origin[name]}") for name in runs_a if f"sft-s{origin[name]}" in hits]
        elif len(runs_b) > 1:  # DPO and S-DPO: runs of the same SFT model and preference seed (finished in both)
            slots_b = {slot[name]: name for name in runs_b}
            pairs = [(name, slots_b[slot[name]]) for name in runs_a if slot[name] in slots_b]
        else:
            pairs = [(name, runs_b[0]) for name in runs_a]
        if not pairs:
            continue
        comparison = {"comparison": f"{a} − {b}", **difference_statistics(pairs, hits),
                      "pairs": [list(pair) for pair in pairs]}
        by_sft: dict[int, list[float]] = {}
        for (x, _), difference in zip(pairs, comparison["per_seed"]):
            by_sft.setdefault(origin.get(x, plan.sft_seeds[0]), []).append(difference)
        if len(by_sft) > 1:
            per_sft = [sum(values) / len(values) for values in by_sft.values()]
            comparison.update(per_sft=per_sft, sft_models=len(per_sft), sft_ahead=sum(d > 0 for d in per_sft),
                              sft_mean=sum(per_sft) / len(per_sft), sft_se=_mean_std(per_sft)[1] / math.sqrt(len(per_sft)))
        comparisons.append(comparison)
    return comparisons


def difference_statistics(pairs: list[tuple[str, str]], hits: dict[str, list[int]]) -> dict:
    """Mean and std over `pairs` (A's run, B's run) of HR@1(A) − HR@1(B); `prompt_se`: the standard error of
    the mean per-prompt difference of the first pair."""
    per_seed = [(sum(hits[x]) - sum(hits[y])) / len(hits[x]) for x, y in pairs]
    first = [x - y for x, y in zip(hits[pairs[0][0]], hits[pairs[0][1]])]
    mean, std = _mean_std(per_seed)
    return {"mean": mean, "std": std, "per_seed": per_seed, "ahead": sum(d > 0 for d in per_seed),
            "runs": len(pairs), "n": len(first), "prompt_se": _mean_std(first)[1] / math.sqrt(len(first))}


def format_differences(comparisons: list[dict], metric: str = "rank HR@1") -> str:
    across = any("per_sft" in c for c in comparisons)
    lines = [f"| A − B ({metric}) | difference: mean ± std over seeds | seeds with A > B | prompt SE | n |"
             + (" per SFT model | ± SE over SFT models | SFT models with A > B |" if across else ""),
             "|---|---|---|---|---|" + ("---|---|---|" if across else "")]
    for c in comparisons:
        spread = f" ± {c['std']:.4f}" if c["runs"] > 1 else ""
        line = (f"| {c['comparison']} | {c['mean']:+.4f}{spread} | {c['ahead']} of {c['runs']} | "
                f"{c['prompt_se']:.4f} | {c['n']} |")
        if across and "per_sft" in c:
            # The mean of the per-model differences, which the SE belongs to (it differs from the mean over runs
            # where SFT models have unequal numbers of runs); files written before `sft_mean` was stored lack it.
            sft_mean = c.get("sft_mean", sum(c["per_sft"]) / len(c["per_sft"]))
            line += (f" {', '.join(f'{d:+.4f}' for d in c['per_sft'])} | {sft_mean:+.4f} ± {c['sft_se']:.4f} | "
                     f"{c['sft_ahead']} of {c['sft_models']} |")
        elif across:
            line += " – | – | – |"
        lines.append(line)
    return "\n".join(lines)


def table_rows(plan: ModelPlan, collected: dict) -> list[dict]:
    """Table 1: reference rows, then base, SFT, DPO and S-DPO (mean ± std over seeds)."""
    rows = []
    for name, metrics in collected["references"].items():
        rows.append({"method": name, "seeds": "-", "n": metrics["n"],
                     **{key: (metrics[key], 0.0) for key, _ in COLUMNS if key in metrics}})
    runs = collected["runs"]
    for method, names in method_runs(plan).items():
        found = [runs[name]["metrics"] for name in names if runs.get(name, {}).get("metrics")]
        if not found:
            continue
        row = {"method": method, "seeds": len(found) if method != "base (untrained)" else "-", "n": found[0]["n"]}
        for key, _ in COLUMNS:
            if all(key in metrics for metrics in found):
                row[key] = _mean_std([metrics[key] for metrics in found])
        rows.append(row)
    return rows


def format_markdown(rows: list[dict]) -> str:
    columns = shown_columns(rows)
    header = ["method", *[label for _, label in columns], "seeds", "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"]]
        for key, _ in columns:
            if key not in row:
                cells.append("–")
            else:
                mean, std = row[key]
                cells.append(f"{mean:.4f} ± {std:.4f}" if isinstance(row["seeds"], int) and row["seeds"] > 1
                             else f"{mean:.4f}")
        lines.append("| " + " | ".join([*cells, str(row["seeds"]), str(row["n"])]) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        columns = shown_columns(rows)
        writer.writerow(["method", "seeds", "n", *[f"{key}_{part}" for key, _ in columns for part in ("mean", "std")]])
        for row in rows:
            values = []
            for key, _ in columns:
                values += [f"{row[key][0]:.6f}", f"{row[key][1]:.6f}"] if key in row else ["", ""]
            writer.writerow([row["method"], row["seeds"], row["n"], *values])
    tmp.replace(path)


PER_PROMPT_FILE = "per_prompt.csv.gz"  # beside results.json: every evaluation's per-prompt ranks and hits


def write_per_prompt(collected: dict, path: Path) -> None:
    """One row per evaluated prompt: `index` (its place in the test split), `rank/<run>` (the target's rank
    among the candidates: popularity, the baselines, every ranked LM evaluation) and `gen_hit/<run>` (1 when
    generation named the target). Gzipped without a timestamp: the same numbers give the same bytes."""
    columns = {"index": collected["prompt_indices"]}
    columns.update({f"rank/{name}": values for name, values in collected["ranks"].items()})
    columns.update({f"gen_hit/{name}": values for name, values in collected["gen_hits"].items()})
    lines = [",".join(columns)] + [",".join(map(str, row)) for row in zip(*columns.values())]
    data = gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_per_prompt(path: Path) -> dict[str, list[int]]:
    """`write_per_prompt`'s columns: {column name: one int per prompt}."""
    rows = list(csv.reader(io.StringIO(gzip.decompress(path.read_bytes()).decode("utf-8"))))
    return {name: [int(value) for value in column] for name, *column in zip(*rows)}


def recompute_paired_differences(folder: Path, metric: str = "rank") -> list[dict]:
    """The paired differences of `folder/results.json` (`metric="generation"`: those of generation HR@1),
    recomputed from the per-prompt ranks and generation hits committed beside it (raises FileNotFoundError for a
    report written before they were kept)."""
    columns = read_per_prompt(folder / PER_PROMPT_FILE)
    if metric == "rank":
        hits = {key.split("/", 1)[1]: [int(rank == 1) for rank in values]
                for key, values in columns.items() if key.startswith("rank/")}
    else:
        hits = {key.split("/", 1)[1]: list(values) for key, values in columns.items() if key.startswith("gen_hit/")}
    stored = _read(folder / "results.json").get(DIFFERENCES_KEY[metric], [])
    return [{"comparison": c["comparison"], **difference_statistics([tuple(pair) for pair in c["pairs"]], hits),
             "pairs": c["pairs"]} for c in stored]


def _main_negatives(payload: dict) -> int:
    """The N of Table 1's S-DPO row (older results.json files have no `plan`: read from the row's name)."""
    if "plan" in payload:
        return payload["plan"]["main_negatives"]
    return next(int(row["method"].split("N=")[1].rstrip(")")) for row in payload["table"]
                if row["method"].startswith("S-DPO"))


def sweep_points(payload: dict, over: str) -> dict[float, dict[int, float]]:
    """{x: {seed: rank HR@1}} over the negatives (beta 1) or over beta (Table 1's N)."""
    main = _main_negatives(payload)
    first_sft = (payload.get("plan", {}).get("sft_seeds") or [None])[0]  # the sweeps start from the first SFT model
    points: dict[float, dict[int, float]] = {}
    for run in payload["runs"].values():
        info, metrics = run["info"], run.get("metrics") or {}
        if "rank_hr@1" not in metrics or "negatives" not in info or info.get("sft_seed", first_sft) != first_sft:
            continue
        if over == "negatives" and info["beta"] == 1.0:
            points.setdefault(info["negatives"], {})[info["seed"]] = metrics["rank_hr@1"]
        elif over == "beta" and info["negatives"] == main:
            points.setdefault(info["beta"], {})[info["seed"]] = metrics["rank_hr@1"]
    return dict(sorted(points.items()))


def _seeds_label(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of seeds {', '.join(map(str, seeds))}"


SWEEP_AXES = {"negatives": "negatives N per prompt (1 = DPO), log scale",
              "beta": "β (dimensionless), log scale"}
HR1_AXIS = "HR@1 (rank): fraction of test prompts"


def sweep_figure(payload: dict, over: str):
    """HR@1 against N or β: every point at the seeds all points share (one line), plus mean ± std over seeds
    where a point has more (Table 1's runs); None with fewer than two points."""
    import matplotlib.pyplot as plt

    points = sweep_points(payload, over)
    if len(points) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    xs = list(points)
    shared = sorted(set.intersection(*(set(seeds) for seeds in points.values())))
    if shared:
        line = [_mean_std([points[x][s] for s in shared]) for x in xs]
        label = f"{_seeds_label(shared)} at every point (n={len(shared)} each)"
    else:  # no seed in common: each point's lowest seed, named in the label
        line = [(points[x][min(points[x])], 0.0) for x in xs]
        label = "lowest seed of each point (seeds differ)"
    if len(shared) > 1:
        ax.errorbar(xs, [m for m, _ in line], yerr=[s for _, s in line], marker="o", capsize=4, color="tab:blue",
                    label=f"{label}; error bar: ± 1 std over seeds")
    else:
        ax.plot(xs, [m for m, _ in line], marker="o", color="tab:blue", label=label)
    several = [(x, _mean_std(list(points[x].values())), len(points[x])) for x in xs if len(points[x]) > len(shared)]
    if several:
        shift = 2 ** 0.1  # beside the single-seed point at the same x (log axis)
        ax.errorbar([x * shift for x, _, _ in several], [m for _, (m, _), _ in several],
                    yerr=[s for _, (_, s), _ in several], fmt="s", color="tab:green", capsize=4, markersize=5,
                    label="mean over n seeds; error bar: ± 1 std over seeds")
        for x, (mean, std), count in several:
            ax.annotate(f"n={count}", (x * shift, mean + std), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=7, color="tab:green")
    sft = [run["metrics"]["rank_hr@1"] for name, run in payload["runs"].items()
           if name.startswith("sft-") and "rank_hr@1" in (run.get("metrics") or {})]
    if sft:
        ax.axhline(sum(sft) / len(sft), color="gray", linestyle="--",
                   label=f"SFT ({len(sft)} run{'s' if len(sft) > 1 else ''}, the start of every point)")
    ax.axhline(payload["references"]["popularity"]["rank_hr@1"], color="tab:red", linestyle=":", label="popularity")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.minorticks_off()
    ax.set_xlabel(SWEEP_AXES[over])
    ax.set_ylabel(HR1_AXIS)
    fixed = "β = 1" if over == "negatives" else f"N = {_main_negatives(payload)}"
    ax.set_title(f"{model_label(payload)} on {payload['dataset']}, {fixed}, n = {payload['eval_records']} test prompts",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


CURVES = (("rewards/chosen", "chosen reward", "reward β·log(π/π_ref) (nats)"),
          ("rewards/rejected", "rejected reward (mean over negatives)", "reward β·log(π/π_ref) (nats)"),
          ("rewards/margins", "margin: chosen − mean rejected", "reward margin (nats)"),
          ("logps/chosen", "log p(chosen)", "log-prob of the chosen item (nats)"))


def curves_figure(payload: dict):
    """DPO and S-DPO training curves of Table 1's runs (beta 1): one thin line per seed, thick = their mean
    at the steps every seed logged; None without logged runs."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    main = _main_negatives(payload)
    curves = {}  # label -> the log histories of its Table 1 runs, one per seed
    for label, n in (("DPO", 1), (f"S-DPO N={main}", main)):
        runs = sorted(((run["info"]["seed"], run["log_history"]) for run in payload["runs"].values()
                       if run["info"].get("negatives") == n and run["info"].get("beta") == 1.0
                       and run.get("log_history")), key=lambda pair: pair[0])  # every SFT model's runs
        if "plan" in payload:  # Table 1's seeds only (a sweep point may add another)
            runs = [(seed, history) for seed, history in runs if seed in payload["plan"]["preference_seeds"]]
        if runs:
            curves[label] = [history for _, history in runs]
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(CURVES), figsize=(15, 3.6))
    for ax, (key, title, ylabel) in zip(axes, CURVES):
        for color, (label, histories) in zip(("tab:blue", "tab:orange"), curves.items()):
            series = [{entry["step"]: entry[key] for entry in history if key in entry and "eval_loss" not in entry}
                      for history in histories]
            for values in series:  # one thin line per seed: a seed that drifts stays visible
                ax.plot(list(values), list(values.values()), color=color, alpha=0.25, linewidth=0.7)
            steps = sorted(set.intersection(*(set(values) for values in series)))
            ax.plot(steps, [sum(values[step] for values in series) / len(series) for step in steps], color=color,
                    label=f"{label}: mean of {len(series)} seed{'s' if len(series) > 1 else ''}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel, fontsize=8)
    handles, _ = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="gray", alpha=0.4, linewidth=0.7, label="thin: one seed (no error bars)"))
    axes[0].legend(handles=handles, fontsize=7)
    fig.suptitle(f"training curves (values on training batches), {model_label(payload)} on {payload['dataset']}, β = 1",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_figures(payload: dict, folder: Path) -> list[str]:
    """The PNG figures of a report (from its results.json payload); returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {f"hr1_vs_{over}.png": sweep_figure(payload, over) for over in ("negatives", "beta")}
    figures["training_curves.png"] = curves_figure(payload)
    written = []
    for name, fig in figures.items():
        if fig is not None:
            fig.savefig(folder / name, dpi=120)
            plt.close(fig)
            written.append(name)
    return written


def _cells_total(payload: dict) -> int:
    """How many cells the report's matrix has (older results.json files: counted from its runs)."""
    if "cells_total" in payload:
        return payload["cells_total"]
    baselines = any("epochs" in metrics for metrics in payload["references"].values())
    return baselines + sum(("train_command" in run) + ("eval_command" in run) for run in payload["runs"].values())


def _short(commit: str) -> str:
    return commit[:7]


def provenance_lines(payload: dict) -> list[str]:
    """What table.md says first: a warning when a run or the report came from a tree with uncommitted
    changes, the commits, and the run's wall time; "not recorded" where an older results.json lacks them."""
    baselines = [name for name, row in payload["references"].items() if "epochs" in row]  # trained ones
    sources = {**payload["runs"], **{name: payload["references"][name] for name in baselines
                                     if "git_commit" in payload["references"][name]}}
    dirty = [name for name, source in sources.items() if source.get("git_dirty")]
    unknown = [name for name, source in sources.items() if "git_dirty" not in source]
    lines = []
    if dirty or payload.get("report_git_dirty"):
        what = [f"run(s) {', '.join(dirty)}"] if dirty else []
        what += ["this report"] if payload.get("report_git_dirty") else []
        lines += [f"**Uncommitted changes:** {' and '.join(what)} came from a tree whose tracked files differed from "
                  "its commit, so no commit alone reproduces them.", ""]
    commits = sorted({_short(source["git_commit"]) for source in sources.values()})
    state = ("none" if not dirty and not unknown else
             f"in {len(dirty)} of {len(sources)}" if not unknown else
             f"not recorded for {len(unknown)} of {len(sources)} (run before `git_dirty` was recorded)")
    report_state = {True: "uncommitted changes", False: "no uncommitted changes"}.get(payload.get("report_git_dirty"),
                                                                                     "uncommitted changes not recorded")
    unrecorded = [name for name in baselines if name not in sources]
    lines.append(f"Provenance: {'runs' if unrecorded else 'runs and baselines'} at "
                 f"commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}"
                 + (f" (baselines {', '.join(unrecorded)}: command and commit not recorded)" if unrecorded else "")
                 + f"; uncommitted changes: {state}. Report written at commit {_short(payload['report_commit'])} "
                 f"({report_state}). Every evaluation's per-prompt ranks: "
                 + (f"`{PER_PROMPT_FILE}`." if payload.get("per_prompt_file") else "not recorded."))
    calls = payload.get("reproduce_calls")
    if calls:
        ran = [call["cells_run"] for call in calls]
        total = _cells_total(payload)
        finished = total - len(payload.get("cells_missing", []))
        summed = sum(call["seconds"] for call in calls)
        overlapped = summed - payload["run_seconds"] > len(calls)  # more than the start times' rounding
        counted = ("cells finished during each call: " if overlapped and any("id" not in call for call in calls)
                   else "cells run: ")
        lines.append(f"Run wall time: {payload['run_seconds'] / 60:.1f} min in {len(calls)} call"
                     f"{'s' if len(calls) > 1 else ''} of reproduce.py from {calls[0]['started_at']} ({counted}"
                     f"{' + '.join(map(str, ran))} of {total})"
                     + (f"; the calls ran partly at once (their own durations add up to {summed / 60:.1f} min)"
                        + ("; calls recorded before each cell named its call, so a cell can count in two"
                           if counted != "cells run: " else "") if overlapped else "")
                     + ("; some cells ran in calls not recorded" if sum(ran) < finished else "")
                     + ("; this report was rewritten later with `--report_only`" if payload.get("report_only") else "")
                     + ".")
    else:
        lines.append("Run wall time: not recorded (only the cells' own times below).")
    return lines


CANDIDATE_NOTES = {  # table.md's line on how the test prompts' negatives were drawn (data/README.md, Protocol)
    "per_sample": "negatives drawn per sample (`data.prepare`'s default)",
    "original": "the original code's negatives, seeded by the target: a history-blind rule that remembers them "
                "ranks most targets first (`candidate_shortcut.py`)",
    "release": "the original release's files, as published (negatives seeded by the target)",
    "synthetic": "the synthetic data's, drawn uniformly per sample",
    "unknown": "not recorded (the data folder has no stats.json)",
}


def model_label(payload: dict) -> str:
    """The model, and the plan's tag where it differs (e.g. `tiny-bpe (plan tiny-bpe-sasrec)`): titles."""
    tag = payload.get("plan", {}).get("tag", payload["model"])
    return payload["model"] + (f" (plan {tag})" if tag != payload["model"] else "")


def format_report(payload: dict) -> str:
    """table.md: a pure function of results.json (tests/test_docs_numbers.py checks the committed ones)."""
    missing = payload["cells_missing"]
    total = _cells_total(payload)
    differences = payload["paired_differences"]
    generation = payload.get(DIFFERENCES_KEY["generation"], [])
    return "\n".join([
        f"# {model_label(payload)} on {payload['dataset']} (profile `{payload['profile']}`)", "",
        *provenance_lines(payload), "",
        f"Evaluation: {payload['eval_records']} test prompts (seeded random sample across users, seed "
        f"{payload['eval_seed']}; the same prompts for every row). Mean ± std over training seeds where seeds > 1.",
        *([f"Candidates: {CANDIDATE_NOTES.get(payload['candidates'], payload['candidates'])}."]
          if "candidates" in payload else []),
        "Generation columns: greedy output names exactly one candidate (valid) and it is the target (HR@1).",
        "Ranking columns: the 20 candidates ranked by log p(name + EOS | prompt).", "",
        format_markdown(payload["table"]), "",
        *(["Paired differences (the same prompts; A's run minus B's at each seed). Prompt SE: the standard error "
           "of the per-prompt difference of the first seed's runs, i.e. the noise of the prompt sample; "
           "a gap is established only where it exceeds both the spread over seeds and this.", "",
           format_differences(differences), ""] if differences else []),
        *(["The same for generation HR@1 (the paper's metric: the greedy output names exactly one candidate and it "
           "is the target); rows that do not generate are left out.", "",
           format_differences(generation, "generation HR@1"), ""] if generation else []),
        f"Cells finished: {total - len(missing)} of {total}"
        + (f" (missing: {', '.join(missing)})" if missing else "")
        + f"; their wall time: {payload['wall_seconds_of_cells'] / 60:.1f} min.",
        *[f"![{name}]({name})" for name in payload["figures"]], "",
    ])


def write_report_files(payload: dict, folder: Path) -> str:
    """table.md, table.csv and the figures from a results.json payload; returns table.md's text."""
    payload["figures"] = plot_figures(payload, folder)
    markdown = format_report(payload)
    (folder / "table.md").write_text(markdown, encoding="utf-8")
    write_csv(payload["table"], folder / "table.csv")
    return markdown


def rewrite_report(folder: str | Path) -> None:
    """Rewrite table.md, table.csv and the figures of a results folder from its results.json alone (no cells, no
    data): for a report written by an earlier version of this code. results.json is left as it is."""
    folder = Path(folder)
    payload = _read(folder / "results.json")
    figures = payload["figures"]
    write_report_files(payload, folder)
    if payload["figures"] != figures:
        raise runtime.UsageError(f"{folder}: the figures would change from {figures} to {payload['figures']}")


def _reproduce_calls(previous: dict, profile: str, call: dict | None) -> list[dict]:
    """The calls of reproduce.py that ran this matrix's cells: this one alone when it ran every cell, else the
    earlier results.json's (same profile) plus this one when it ran any."""
    calls = previous.get("reproduce_calls", []) if previous.get("profile") == profile else []
    if call is None or call["cells_run"] == 0:
        return calls
    return [call] if call["cells_run"] == call["cells"] else [*calls, call]


def _call_start(call: dict) -> int:
    return calendar.timegm(time.strptime(call["started_at"], "%Y-%m-%d %H:%M:%S UTC"))


def calls_wall_seconds(calls: list[dict]) -> float:
    """The time during which at least one of the calls ran (calls started side by side on one matrix overlap:
    their durations' sum would count the shared minutes twice). Start times are whole seconds, so an overlap of
    a second or less is read as one call starting after the other."""
    total, end = 0.0, -math.inf
    for start, stop in sorted((_call_start(call), _call_start(call) + call["seconds"]) for call in calls):
        total += stop - start if start >= end - 1 else max(0.0, stop - end)
        end = max(end, stop)
    return round(total, 1)


def _count_cells_per_call(calls: list[dict], records: list[dict]) -> list[dict]:
    """Each call's `cells_run` counted again from the current cell records that name it (records name the call
    that ran them since calls carry an id); calls without an id, or a report without records, keep theirs."""
    if not any(record.get("call") for record in records):
        return calls
    counts = Counter(record.get("call") for record in records)
    return [dict(call, cells_run=counts.get(call["id"], 0)) if "id" in call else call for call in calls]


def _calls_that_made_current_cells(calls: list[dict], records: list[dict], call: dict | None) -> list[dict]:
    """The calls (besides this one) during which some current cell finished: an earlier call whose cells have all
    been run again since (e.g. after a profile's flags changed) no longer describes the results. Kept as they are
    where no cell record is at hand (a report from elsewhere)."""
    finished = [time.mktime(time.strptime(record["finished_at"], "%Y-%m-%d %H:%M:%S"))  # local time, as written
                for record in records if record.get("finished_at")]
    if not finished:
        return calls

    def made_a_current_cell(earlier: dict) -> bool:
        start = _call_start(earlier)
        return any(start - 1 <= moment <= start + earlier["seconds"] + 2 for moment in finished)

    return [earlier for earlier in calls if earlier is call or made_a_current_cell(earlier)]


def report(plan: ModelPlan, cells: list[Cell], root: Path, dataset: str, results_dir: Path, profile: str,
           call: dict | None = None) -> Path:
    """Write table.md, table.csv, results.json, the per-prompt ranks and the figures of one model plan; returns
    the folder. `call`: the reproduce call that ran cells (None: --report_only; the earlier wall time is kept)."""
    collected = collect(plan, cells, root, dataset)
    dataset = collected["dataset"]
    folder = results_dir / dataset / plan.tag
    folder.mkdir(parents=True, exist_ok=True)
    records = [current_record(cell, root) for cell in cells]
    generation = paired_differences(plan, collected, "generation")
    calls = _count_cells_per_call(
        _calls_that_made_current_cells(_reproduce_calls(_read(folder / "results.json"), profile, call), records, call),
        records)
    write_per_prompt(collected, folder / PER_PROMPT_FILE)
    state = git_state()
    payload = {"profile": profile, "plan": asdict(plan),
               **{k: v for k, v in collected.items() if k not in ("hits", "ranks", "gen_hits", "prompt_indices")},
               "table": table_rows(plan, collected), "paired_differences": paired_differences(plan, collected),
               **({DIFFERENCES_KEY["generation"]: generation} if generation else {}),
               "figures": [], "cells_total": len(cells),
               "cells_missing": [cell.name for cell in cells if not current_record(cell, root)],
               "wall_seconds_of_cells": round(sum(run.get("train_seconds", 0) + run.get("eval_seconds", 0)
                                                  for run in collected["runs"].values()), 1),
               "per_prompt_file": PER_PROMPT_FILE,
               **({"run_seconds": calls_wall_seconds(calls), "run_started_at": calls[0]["started_at"],
                   "reproduce_calls": calls} if calls else {}),
               "report_only": call is None, "report_command": [Path(sys.argv[0]).name, *sys.argv[1:]],
               "report_commit": state["git_commit"], "report_git_dirty": state["git_dirty"]}
    markdown = write_report_files(payload, folder)
    runtime.save_json(folder / "results.json", payload)
    print(markdown)
    return folder


# ----------------------------------------------------------------------------------------------
# Entry point


def select_cells(matrix: list[Cell], patterns: str | tuple | list) -> list[Cell]:
    """The cells of one matrix whose names match any of the comma-separated shell patterns, in run order.
    A pattern that matches no cell, or a selected cell that needs an unselected cell not finished yet, is a
    one-line error (the run would otherwise wait for it forever)."""
    wanted = [p.strip() for p in (patterns.split(",") if isinstance(patterns, str) else patterns) if p.strip()]
    unmatched = [p for p in wanted if not any(fnmatch.fnmatchcase(cell.name, p) for cell in matrix)]
    if unmatched:
        raise runtime.UsageError(f"--cells {', '.join(unmatched)}: no cell of the plan matches "
                                 f"(cells: {', '.join(cell.name for cell in matrix)})")
    chosen = [cell for cell in matrix if any(fnmatch.fnmatchcase(cell.name, p) for p in wanted)]
    names = {cell.name for cell in chosen}
    by_name = {cell.name: cell for cell in matrix}
    for cell in chosen:
        root = cell.root or matrix[0].root
        for need in cell.needs:
            if need not in names and not current_record(by_name[need], root):
                raise runtime.UsageError(f"--cells: {cell.name} needs {need}, which is neither selected nor "
                                         f"finished under {root}; add it to --cells")
    return chosen


def reproduce(profile: str = "cpu", dataset: str = "lastfm", output_root: str = "outputs/reproduce",
              results_dir: str = "results", models: str | None = None, dry_run: bool = False,
              report_only: bool = False, jobs: int = 1, cells: str | None = None,
              report_tables: bool = True, call_id: str | None = None) -> None:
    """Run (or print, or only report) a profile's matrix.

    Args:
        profile: `cpu` (a 2-core CPU; with --jobs 2 SmolLM2 took 29.5 min on LastFM, the tiny plan about 3.5
            hours; MovieLens's Table 1 with one preference seed per SFT model 99.2 min; tiny-bpe's cells 135 min
            of one core; tiny-bpe-sasrec 153.6 min, its SFT cell alone 105.7; the README's table), `paper`
            (Llama-2-7B on NPROC GPUs, default all visible; the paper used 4) or `smoke` (seconds).
        dataset: a prepared dataset name or folder (as the stages take it).
        output_root: where stage outputs, cell records and logs go (`<output_root>/<profile>/<dataset>/<model>`).
        results_dir: where the tables and figures go (`<results_dir>/<dataset>/<model>/`).
        models: comma-separated tags of the profile's models to run (default: all).
        dry_run: print every command and run nothing.
        report_only: write the tables and figures from the cells finished so far, run nothing.
        jobs: run cells in this many processes at once, each pinned to its share of the CPUs (e.g. 2 on a
            2-core machine: about half the wall time). Keep 1 where each cell uses every GPU (paper profile).
        cells: comma-separated cell names or shell patterns to run (default: every cell), e.g.
            `'sft-s*,eval-sft-s*'` to rerun only the SFT models and their evaluations under another
            --output_root. A selected cell's inputs must be selected too or already finished.
        report_tables: write the tables and figures at the end (the workers of `--jobs` leave it to the parent).
        call_id: the id written into the records of the cells this call runs (default: its start time and
            process id; the workers of `--jobs` get their parent's), so that calls running at once on one
            matrix each count only their own cells.
    """
    if profile not in PROFILES:
        raise runtime.UsageError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    plans = PROFILES[profile]
    if models:
        wanted = models.split(",") if isinstance(models, str) else list(models)
        unknown = set(wanted) - {plan.tag for plan in plans}
        if unknown:
            raise runtime.UsageError(f"profile {profile} has no model {', '.join(sorted(unknown))}: "
                                     f"use {', '.join(plan.tag for plan in plans)}")
        plans = [plan for plan in plans if plan.tag in wanted]
    dataset_name = Path(dataset).name if Path(dataset).is_dir() else dataset
    start = time.time()
    started_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start))
    call_id = call_id or f"{started_at} pid {os.getpid()}"
    matrices = [(plan, plan_cells(plan, dataset, Path(output_root) / profile / dataset_name / plan.tag))
                for plan in plans]
    if cells and not isinstance(cells, str):  # fire reads `a,b` as a tuple
        cells = ",".join(cells)
    selected = [(plan, select_cells(matrix, cells)) for plan, matrix in matrices] if cells else matrices
    runs_cells = not dry_run and not report_only
    failed: list[str] = []
    if jobs != 1 and runs_cells:
        runtime.load_stage_data(("train", "val", "test"), dataset)  # fail on bad data before any worker starts
        argv = ["--profile", profile, "--dataset", dataset, "--output_root", output_root, "--results_dir",
                results_dir, "--models", ",".join(plan.tag for plan in plans), "--report_tables=False",
                "--call_id", call_id]
        if cells:
            argv += ["--cells", cells]
        if run_in_workers(argv, jobs):
            failed.append("(see the workers' messages above)")
        report_only = True  # the workers ran the cells; the tables come from here
    if dry_run:
        for _, chosen in selected:
            for cell in chosen:
                print(" ".join(cell.command))
    elif not report_only:
        runtime.load_stage_data(("train", "val", "test"), dataset)  # fail on bad data before any cell runs
        # Every model's cells in one queue, in plan order: a free worker moves on to the next model's cells
        # while the cells left in the first wait for its SFT.
        failed += run_cells([cell for _, chosen in selected for cell in chosen], call=call_id)
    if report_tables and not dry_run:
        seconds = round(time.time() - start, 1)  # the whole call up to its report, every model of it
        for plan, matrix in matrices:
            call = None
            if runs_cells:  # this call's share of the matrix: the current cells whose records name this call
                ran = [cell for cell in matrix if current_record(cell, matrix[0].root).get("call") == call_id]
                call = {"id": call_id, "started_at": started_at, "seconds": seconds, "cells_run": len(ran),
                        "cells": len(matrix), "models": [p.tag for p, _ in matrices], "jobs": jobs, **git_state()}
                if cells:
                    call["cells_selected"] = cells
            report(plan, matrix, matrix[0].root, dataset, Path(results_dir), profile, call)
    if not dry_run:
        print(f"reproduce finished in {time.time() - start:.0f} s")
    if failed:
        raise runtime.UsageError(f"{len(failed)} cell(s) failed or were skipped: {', '.join(failed)} "
                                 f"(logs under {output_root}); rerun to retry them")


if __name__ == "__main__":
    runtime.main(reproduce)
