"""The paper's experiments as one resumable matrix: Table 1, the negatives and beta sweeps, training curves.

    bash reproduce.sh                                   # profile cpu on LastFM (about 2.5 hours on 2 cores, estimated)
    python reproduce.py --profile cpu --dataset lastfm  # the same, without the set-up
    python reproduce.py --profile paper --dry_run       # print the paper-scale commands (4 GPUs)

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
config, seed, wall time and git commit) and PNG figures: HR@1 against the number of negatives and
against beta, and DPO vs S-DPO training curves (rewards, margin, chosen log-prob).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import data_interface as di
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
)


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
    launcher: tuple[str, ...] = ()  # e.g. torchrun for multi-GPU profiles; empty: this Python
    baselines: tuple[str, ...] = ("gru4rec", "caser", "sasrec")  # conventional recommenders (python -m baselines)
    baseline_flags: dict = field(default_factory=dict)  # extra flags of `python -m baselines` (e.g. epochs)


PROFILES: dict[str, list[ModelPlan]] = {
    # Measured on 2 CPU cores (see README): the tiny LLaMA (one token per item, trained in full from
    # scratch) carries the ranking columns, the sweeps and the seeds; SmolLM2-135M carries the
    # generation columns on a random sample of test prompts.
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
    ],
    # The paper's setting (Llama-2-7B, 4-bit NF4 + LoRA, 4 GPUs, effective batch 4 x 8 x 4 = 128): not run
    # here; `--dry_run` prints its commands.
    "paper": [
        ModelPlan(
            model_name="meta-llama/Llama-2-7b-hf", tag="llama-2-7b",
            sft=dict(batch_size=4, gradient_accumulation_steps=8, learning_rate=1e-5, num_train_epochs=5,
                     max_steps=-1, eval_step=0.2, max_eval_samples=2000),
            preference=dict(batch_size=4, gradient_accumulation_steps=8, learning_rate=1e-5, num_train_epochs=3,
                            max_steps=-1, eval_step=0.1, max_eval_samples=2000),
            preference_seeds=(0,), negatives=(1, 3, 7, 15), betas=(0.5, 1.0, 2.0, 5.0),
            eval=dict(batch_size=32),
            launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"),
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


def _flags(values: dict) -> list[str]:
    return [f"--{key}={value}" for key, value in values.items() if value is not None]


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
    """Every cell of one model plan, in run order (SFT, its evaluation, then preference runs and theirs)."""
    data = ["--dataset", dataset]
    train = [python, *plan.launcher] if plan.launcher else [python]
    cells: list[Cell] = []

    def evaluation(name: str, checkpoint: Path | None, needs: tuple[str, ...], info: dict) -> Cell:
        command = [python, "inference.py", "--base_model", plan.model_name, *data,
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
                   "--overwrite_output_dir", f"--seed={sft_seed}", *_flags(plan.sft)]
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
                   "--overwrite_output_dir", f"--seed={seed}", f"--beta={beta:g}", *_flags(plan.preference)]
        if negatives != 1:
            command.append(f"--neg_num={negatives}")
        info = {"method": "dpo" if negatives == 1 else "sdpo", "seed": seed, "negatives": negatives, "beta": beta,
                **({"sft_seed": sft_seed} if several else {})}
        cells.append(Cell(name, "preference", command, out, (sft_out.name,), info))
        cells.append(evaluation(name, out, (name,), info))
    for cell in cells:
        cell.root = root
    return cells


# ----------------------------------------------------------------------------------------------
# Running


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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
    the cell's command changed (e.g. a profile's flag was edited) or a cell it needs was run again since."""
    record = _read(root / "cells" / f"{cell.name}.json")
    if not record:
        return {}
    written_by = record.get("cell_command") or [part for part in record["command"]
                                                if part not in RESUME_FLAGS.values()]
    if _identity(written_by) != _identity(cell.command):
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


def run_cell(cell: Cell, records: Path, logs: Path) -> dict:
    """Run one cell's command (its output appended to logs/<cell>.log); returns its record, written atomically."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{cell.name}.log"
    command = command_to_run(cell)
    needs = {need: _digest(records / f"{need}.json") for need in cell.needs}  # the inputs it is made from
    if cell.kind in RESUME_FLAGS:
        runtime.save_json(cell.output / CELL_COMMAND_FILE, {"command": cell.command})
    start = time.time()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        returncode = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent).returncode
    if returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"cell {cell.name} failed (exit {returncode}): {tail[0][:300]} [log: {log}]")
    record = {"name": cell.name, "kind": cell.kind, "command": command, "cell_command": cell.command,
              "needs": needs, "info": cell.info,
              "wall_seconds": round(time.time() - start, 1), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
              "git_commit": git_commit()}
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


def run_cells(cells: list[Cell], root: Path | None = None, poll_seconds: float = 5.0) -> list[str]:
    """Run every unfinished cell once the cells it needs have finished; returns the names of the cells that
    failed or were skipped because a cell they need failed.

    A cell's records, logs and locks live under its own `root` (or this `root`), so one call can run several
    matrices (e.g. every model of a profile): a cell waiting for its matrix's SFT does not keep a worker from
    the next matrix's cells. Several harness processes may work on one matrix at once (`--jobs`, or one per
    machine on a shared disk): a process claims a cell with a lock file before running it, skips cells another
    process holds, and waits for those its next cells need. A lock dies with its process, so a killed run's
    cell is free to be claimed again."""

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
                    record = run_cell(cell, folder / "cells", folder / "logs")
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
    """Every finished cell's numbers, plus the reference rows on the same evaluation prompts."""
    data = runtime.load_stage_data(("train", "test"), dataset)
    test = di.sample_records(data.test, plan.eval.get("max_samples"), plan.eval_seed)
    references = di.reference_metrics(data.train, test)
    hits = {"popularity": [int(rank == 1) for rank in di.popularity_ranks(data.train, test)]}
    runs: dict[str, dict] = {}
    for cell in cells:
        record = current_record(cell, root)
        if not record:
            continue
        if cell.kind == "baselines":
            for name in plan.baselines:
                metrics = _read(cell.output / name / inference_metrics_file())
                if metrics:
                    references[name] = metrics
            continue
        entry = runs.setdefault(cell.info.get("trained", cell.name), {"info": cell.info})
        if cell.kind == "eval":
            entry["metrics"] = _read(cell.output / inference_metrics_file())
            ranks = prompt_ranks(cell.output)
            if ranks:
                hits[cell.info.get("trained", cell.name)] = [int(rank == 1) for rank in ranks]
            entry["eval_seconds"] = record["wall_seconds"]
            entry["eval_command"] = record["command"]
        else:
            entry["train_seconds"] = record["wall_seconds"]
            entry["config"] = _read(cell.output / "run_info.json").get("flags", {})
            entry["train_command"] = record["command"]
            entry["log_history"] = _read(cell.output / "log_history.json").get("log_history", [])
        entry["git_commit"] = record["git_commit"]
    return {"model": plan.model_name, "dataset": Path(dataset).name, "eval_records": len(test), "eval_seed": plan.eval_seed,
            "references": references, "runs": runs, "hits": hits}


def inference_metrics_file() -> str:
    import inference

    return inference.METRICS_FILE


def prompt_ranks(folder: Path) -> list[int]:
    """The target's rank at every prompt of an evaluation (predictions.jsonl, in the sample's order); [] if
    it has no ranking."""
    import inference

    path = folder / inference.PREDICTIONS_FILE
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["target_rank"] for row in rows] if rows and all("target_rank" in row for row in rows) else []


def method_runs(plan: ModelPlan) -> dict[str, list[str]]:
    """Table 1's trained rows and the runs (one per seed) each one averages."""
    return {
        "base (untrained)": ["base"],
        "SFT": [f"sft-s{s}" for s in plan.sft_seeds],
        "DPO": table_runs(plan, 1),
        f"S-DPO (N={plan.main_negatives})": table_runs(plan, plan.main_negatives),
    }


def paired_differences(plan: ModelPlan, collected: dict) -> list[dict]:
    """Rank HR@1 differences between the rows of Table 1 that the paper orders, on the same prompts.

    For "A − B": `per_seed` lists A's run minus B's run at each seed both have (B's single run where it has
    one, e.g. SFT or popularity; with several SFT seeds, the SFT model A's run started from); `ahead` counts
    the seeds where A is higher; `prompt_se` is the standard error of the mean per-prompt difference of A's
    and B's first runs (paired over prompts): how much the difference would move with another sample of
    test prompts, which the spread over seeds does not show. With several SFT seeds, `per_sft` holds the
    mean difference within each SFT model and `sft_se` the standard error of their mean (std of `per_sft` /
    sqrt(SFT models)): it counts both the spread of preference seeds within an SFT model and that between
    SFT models; `sft_ahead` counts the SFT models where A is higher on average.
    """
    sdpo = f"S-DPO (N={plan.main_negatives})"
    groups = {**method_runs(plan), "popularity": ["popularity"]}
    hits = collected["hits"]
    several = len(plan.sft_seeds) > 1
    origin = {name: sft_seed for sft_seed in plan.sft_seeds  # run -> the SFT seed it started from (or is)
              for name in [f"sft-s{sft_seed}"] + [preference_name(n, 1.0, seed, sft_seed if several else None)
                                                  for n in (1, plan.main_negatives) for seed in plan.preference_seeds]}
    comparisons = []
    for a, b in ((sdpo, "DPO"), ("DPO", "SFT"), (sdpo, "SFT"), ("SFT", "base (untrained)"), (sdpo, "popularity")):
        runs_a = [name for name in groups[a] if name in hits]
        runs_b = [name for name in groups[b] if name in hits]
        if not runs_a or not runs_b:
            continue
        if b == "SFT" and len(runs_b) > 1:  # each preference run against the SFT model it started from
            pairs = [(name, f"sft-s{origin[name]}") for name in runs_a if f"sft-s{origin[name]}" in hits]
        elif len(runs_b) > 1:
            pairs = list(zip(runs_a, runs_b))
        else:
            pairs = [(name, runs_b[0]) for name in runs_a]
        if not pairs:
            continue
        per_seed = [(sum(hits[x]) - sum(hits[y])) / len(hits[x]) for x, y in pairs]
        first = [x - y for x, y in zip(hits[pairs[0][0]], hits[pairs[0][1]])]
        mean, std = _mean_std(per_seed)
        comparison = {"comparison": f"{a} − {b}", "mean": mean, "std": std, "per_seed": per_seed,
                      "ahead": sum(d > 0 for d in per_seed), "runs": len(pairs), "n": len(first),
                      "prompt_se": _mean_std(first)[1] / math.sqrt(len(first))}
        by_sft: dict[int, list[float]] = {}
        for (x, _), difference in zip(pairs, per_seed):
            by_sft.setdefault(origin.get(x, plan.sft_seeds[0]), []).append(difference)
        if len(by_sft) > 1:
            per_sft = [sum(values) / len(values) for values in by_sft.values()]
            comparison.update(per_sft=per_sft, sft_models=len(per_sft), sft_ahead=sum(d > 0 for d in per_sft),
                              sft_se=_mean_std(per_sft)[1] / math.sqrt(len(per_sft)))
        comparisons.append(comparison)
    return comparisons


def format_differences(comparisons: list[dict]) -> str:
    across = any("per_sft" in c for c in comparisons)
    lines = ["| A − B (rank HR@1) | difference: mean ± std over seeds | seeds with A > B | prompt SE | n |"
             + (" per SFT model | ± SE over SFT models | SFT models with A > B |" if across else ""),
             "|---|---|---|---|---|" + ("---|---|---|" if across else "")]
    for c in comparisons:
        spread = f" ± {c['std']:.4f}" if c["runs"] > 1 else ""
        line = (f"| {c['comparison']} | {c['mean']:+.4f}{spread} | {c['ahead']} of {c['runs']} | "
                f"{c['prompt_se']:.4f} | {c['n']} |")
        if across:
            line += (f" {', '.join(f'{d:+.4f}' for d in c['per_sft'])} | {c['mean']:+.4f} ± {c['sft_se']:.4f} | "
                     f"{c['sft_ahead']} of {c['sft_models']} |" if "per_sft" in c else " – | – | – |")
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
    header = ["method", *[label for _, label in COLUMNS], "seeds", "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"]]
        for key, _ in COLUMNS:
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
        writer.writerow(["method", "seeds", "n", *[f"{key}_{part}" for key, _ in COLUMNS for part in ("mean", "std")]])
        for row in rows:
            values = []
            for key, _ in COLUMNS:
                values += [f"{row[key][0]:.6f}", f"{row[key][1]:.6f}"] if key in row else ["", ""]
            writer.writerow([row["method"], row["seeds"], row["n"], *values])
    tmp.replace(path)


def sweep_points(plan: ModelPlan, collected: dict, over: str) -> list[tuple[float, float, float, int]]:
    """(x, mean, std, seeds) of rank HR@1 over the negatives (beta 1) or over beta (main negatives)."""
    points = []
    first = plan.sft_seeds[0]  # the sweeps start from the first SFT model only
    xs = plan.negatives if over == "negatives" else plan.betas
    for x in xs:
        negatives, beta = (x, 1.0) if over == "negatives" else (plan.main_negatives, x)
        values = [run["metrics"]["rank_hr@1"] for name, run in collected["runs"].items()
                  if run.get("metrics") and "rank_hr@1" in run["metrics"]
                  and run["info"].get("negatives") == negatives and run["info"].get("beta") == beta
                  and run["info"].get("sft_seed", first) == first]
        if values:
            points.append((x, *_mean_std(values), len(values)))
    return points


def plot_figures(plan: ModelPlan, collected: dict, folder: Path) -> list[str]:
    """PNG figures; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    references = collected["references"]
    sft = [run["metrics"]["rank_hr@1"] for name, run in collected["runs"].items()
           if name.startswith("sft-") and run.get("metrics") and "rank_hr@1" in run["metrics"]]
    for over, label, log_x in (("negatives", "number of negatives N (1 = DPO)", True), ("beta", "beta", True)):
        points = sweep_points(plan, collected, over)
        if len(points) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.6))
        xs, means, stds, seeds = zip(*points)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label="S-DPO / DPO")
        for x, mean, count in zip(xs, means, seeds):
            ax.annotate(f"{count} seed{'s' if count > 1 else ''}", (x, mean), textcoords="offset points",
                        xytext=(0, -12), ha="center", fontsize=7)  # centred: the last label stays inside
        if sft:
            ax.axhline(sum(sft) / len(sft), color="gray", linestyle="--", label="SFT")
        ax.axhline(references["popularity"]["rank_hr@1"], color="tab:red", linestyle=":", label="popularity")
        if log_x:
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel(label)
        ax.set_ylabel("HR@1 (ranking)")
        ax.set_title(f"{collected['model']} on {collected['dataset']}, n={collected['eval_records']}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"hr1_vs_{over}.png"
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        written.append(name)

    curves = {}  # label -> the log histories of its Table 1 runs, one per seed
    for label, n in (("DPO", 1), (f"S-DPO N={plan.main_negatives}", plan.main_negatives)):
        histories = [history for name in table_runs(plan, n)
                     if (history := collected["runs"].get(name, {}).get("log_history"))]
        if histories:
            curves[label] = histories
    if curves:
        keys = (("rewards/chosen", "chosen reward"), ("rewards/rejected", "rejected reward (mean)"),
                ("rewards/margins", "margin"), ("logps/chosen", "log p(chosen)"))
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
        for ax, (key, title) in zip(axes, keys):
            for color, (label, histories) in zip(("tab:blue", "tab:orange"), curves.items()):
                series = [{entry["step"]: entry[key] for entry in history if key in entry and "eval_loss" not in entry}
                          for history in histories]
                for values in series:  # one thin line per seed: a seed that drifts stays visible
                    ax.plot(list(values), list(values.values()), color=color, alpha=0.25, linewidth=0.7)
                steps = sorted(set.intersection(*(set(values) for values in series)))
                ax.plot(steps, [sum(values[step] for values in series) / len(series) for step in steps], color=color,
                        label=f"{label} (mean of {len(series)} seed{'s' if len(series) > 1 else ''})")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"training curves (training batches), {collected['model']} on {collected['dataset']}, beta 1",
                     fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "training_curves.png", dpi=120)
        plt.close(fig)
        written.append("training_curves.png")
    return written


def report(plan: ModelPlan, cells: list[Cell], root: Path, dataset: str, results_dir: Path, profile: str) -> Path:
    """Write table.md, table.csv, results.json and the figures of one model plan; returns the folder."""
    collected = collect(plan, cells, root, dataset)
    dataset = collected["dataset"]
    folder = results_dir / dataset / plan.tag
    folder.mkdir(parents=True, exist_ok=True)
    rows = table_rows(plan, collected)
    differences = paired_differences(plan, collected)
    figures = plot_figures(plan, collected, folder)
    total = sum(run.get("train_seconds", 0) + run.get("eval_seconds", 0) for run in collected["runs"].values())
    missing = [cell.name for cell in cells if not current_record(cell, root)]
    markdown = "\n".join([
        f"# {plan.model_name} on {dataset} (profile `{profile}`)", "",
        f"Evaluation: {collected['eval_records']} test prompts (seeded random sample across users, seed "
        f"{plan.eval_seed}; the same prompts for every row). Mean ± std over training seeds where seeds > 1.",
        "Generation columns: greedy output names exactly one candidate (valid) and it is the target (HR@1).",
        "Ranking columns: the 20 candidates ranked by log p(name + EOS | prompt).", "",
        format_markdown(rows), "",
        *(["Paired differences (the same prompts; A's run minus B's at each seed). Prompt SE: the standard error "
           "of the per-prompt difference of the first seed's runs, i.e. the noise of the prompt sample; "
           "a gap is established only where it exceeds both the spread over seeds and this.", "",
           format_differences(differences), ""] if differences else []),
        f"Cells finished: {len(cells) - len(missing)} of {len(cells)}"
        + (f" (missing: {', '.join(missing)})" if missing else "") + f"; their wall time: {total / 60:.1f} min.",
        *[f"![{name}]({name})" for name in figures], "",
    ])
    (folder / "table.md").write_text(markdown, encoding="utf-8")
    write_csv(rows, folder / "table.csv")
    payload = {"profile": profile, **{k: v for k, v in collected.items() if k != "hits"}, "table": rows,
               "paired_differences": differences, "figures": figures,
               "cells_missing": missing, "wall_seconds_of_cells": round(total, 1), "report_commit": git_commit()}
    runtime.save_json(folder / "results.json", payload)
    print(markdown)
    return folder


# ----------------------------------------------------------------------------------------------
# Entry point


def reproduce(profile: str = "cpu", dataset: str = "lastfm", output_root: str = "outputs/reproduce",
              results_dir: str = "results", models: str | None = None, dry_run: bool = False,
              report_only: bool = False, jobs: int = 1, report_tables: bool = True) -> None:
    """Run (or print, or only report) a profile's matrix.

    Args:
        profile: `cpu` (2-core CPU, about 2.5 hours with --jobs 2, estimated from cell times), `paper`
            (Llama-2-7B on 4 GPUs) or `smoke` (seconds).
        dataset: a prepared dataset name or folder (as the stages take it).
        output_root: where stage outputs, cell records and logs go (`<output_root>/<profile>/<dataset>/<model>`).
        results_dir: where the tables and figures go (`<results_dir>/<dataset>/<model>/`).
        models: comma-separated tags of the profile's models to run (default: all).
        dry_run: print every command and run nothing.
        report_only: write the tables and figures from the cells finished so far, run nothing.
        jobs: run cells in this many processes at once, each pinned to its share of the CPUs (e.g. 2 on a
            2-core machine: about half the wall time). Keep 1 where each cell uses every GPU (paper profile).
        report_tables: write the tables and figures at the end (the workers of `--jobs` leave it to the parent).
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
    failed: list[str] = []
    if jobs != 1 and not dry_run and not report_only:
        runtime.load_stage_data(("train", "val", "test"), dataset)  # fail on bad data before any worker starts
        argv = ["--profile", profile, "--dataset", dataset, "--output_root", output_root, "--results_dir",
                results_dir, "--models", ",".join(plan.tag for plan in plans), "--report_tables=False"]
        if run_in_workers(argv, jobs):
            failed.append("(see the workers' messages above)")
        report_only = True  # the workers ran the cells; the tables come from here
    matrices = [(plan, plan_cells(plan, dataset, Path(output_root) / profile / dataset_name / plan.tag))
                for plan in plans]
    if dry_run:
        for _, cells in matrices:
            for cell in cells:
                print(" ".join(cell.command))
    elif not report_only:
        runtime.load_stage_data(("train", "val", "test"), dataset)  # fail on bad data before any cell runs
        # Every model's cells in one queue, in plan order: a free worker moves on to the next model's cells
        # while the cells left in the first wait for its SFT.
        failed += run_cells([cell for _, cells in matrices for cell in cells])
    if report_tables and not dry_run:
        for plan, cells in matrices:
            report(plan, cells, cells[0].root, dataset, Path(results_dir), profile)
    if not dry_run:
        print(f"reproduce finished in {time.time() - start:.0f} s")
    if failed:
        raise runtime.UsageError(f"{len(failed)} cell(s) failed or were skipped: {', '.join(failed)} "
                                 f"(logs under {output_root}); rerun to retry them")


if __name__ == "__main__":
    runtime.main(reproduce)
