"""Train GRU4Rec / Caser / SASRec on a prepared dataset and rank each test record's own candidates.

    python -m baselines --dataset lastfm --model all --output_dir outputs/baselines/lastfm

Training: every record of `train.json` is one example, its last `max_history` history items -> its
`trueSelection` (the records are sliding windows over each user's sequence, so this covers every
position). Loss: cross-entropy over all items. Model selection: HR@1 on `val.json` after every epoch,
ranking each record's 20 candidates; training stops after `patience` epochs without improvement and
the best epoch's weights are evaluated on `test.json` the same way.

Writes `DIR/<model>/metrics.json` (`hr@1`, `valid_ratio` = 1.0, `n`, the ranking metrics of
`data_interface.ranking_metrics`, wall times, epochs) and `DIR/<model>/predictions.jsonl` (index,
target, prediction, rank of the target, hit). `popularity` and `random` are the reference rows on the
same records (`--model all` writes them too).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

import data_interface as di
import runtime
from baselines.models import MODELS

logger = logging.getLogger("sdpo.baselines")

# Defaults (each is a flag of `python -m baselines`).
EMBEDDING_DIM = 64  # item embedding and hidden size of every model
MAX_HISTORY = 10  # most recent history items a model sees (the prepared data keeps at most 10)
BATCH_SIZE = 256
LEARNING_RATE = 1e-3  # Adam
MAX_EPOCHS = 100
PATIENCE = 5  # epochs without a better val HR@1 before stopping
THREADS = 2  # torch CPU threads; metrics are reproducible for a fixed thread count

REFERENCES = ("popularity", "random")
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"


@dataclass
class EncodedSplit:
    """A split as tensors: histories [N, L] left-padded with 0, targets [N], candidates [N, C]."""

    records: list[di.Record]
    histories: torch.Tensor
    targets: torch.Tensor
    candidates: torch.Tensor


def item_vocabulary(splits: Sequence[Sequence[di.Record]]) -> dict[str, int]:
    """Index 1..V for every item name in any split (0 is padding).

    Items that occur only in val/test candidates still get an index (an untrained embedding), so every
    candidate can be scored; the models are trained on train only.
    """
    names = {name for records in splits for r in records for name in (*r.history, *r.candidates, r.target)}
    return {name: index for index, name in enumerate(sorted(names), start=1)}


def encode(records: Sequence[di.Record], vocabulary: dict[str, int], max_history: int) -> EncodedSplit:
    histories = torch.zeros(len(records), max_history, dtype=torch.long)
    for row, record in enumerate(records):
        recent = [vocabulary[name] for name in record.history[-max_history:]]
        histories[row, max_history - len(recent):] = torch.tensor(recent)
    targets = torch.tensor([vocabulary[r.target] for r in records])
    candidates = torch.tensor([[vocabulary[name] for name in r.candidates] for r in records])
    return EncodedSplit(list(records), histories, targets, candidates)


@torch.inference_mode()
def candidate_scores(model: torch.nn.Module, split: EncodedSplit, batch_size: int = 1024) -> list[list[float]]:
    """The model's score of each record's candidates, in the record's candidate order."""
    model.eval()
    scores = [model(split.histories[start:start + batch_size]).gather(1, split.candidates[start:start + batch_size])
              for start in range(0, len(split.records), batch_size)]
    return torch.cat(scores).tolist()


def target_ranks(scores: Sequence[Sequence[float]], records: Sequence[di.Record]) -> list[int]:
    """1-based rank of each record's target among its candidates (ties as in `di.rank_of_target`)."""
    return [di.rank_of_target(row, record.candidates, record.target) for row, record in zip(scores, records)]


def train_model(name: str, model: torch.nn.Module, train: EncodedSplit, val: EncodedSplit, epochs: int,
                patience: int, batch_size: int, learning_rate: float, seed: int, progress: bool) -> dict:
    """Adam on full cross-entropy; keeps the weights of the epoch with the best val HR@1.

    Returns {"epochs": epochs run, "best_epoch", "val_hr@1": of the best epoch}.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    shuffle = torch.Generator().manual_seed(seed)
    best_hr, best_epoch, best_state = -1.0, 0, None
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train.records), generator=shuffle)
        total_loss = 0.0
        batches = runtime.progress_bar(order.split(batch_size), f"{name} epoch {epoch}", progress, leave=False)
        for batch in batches:
            loss = F.cross_entropy(model(train.histories[batch]), train.targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
        val_hr = di.ranking_metrics(target_ranks(candidate_scores(model, val), val.records))["rank_hr@1"]
        logger.info("%s epoch %d: train loss %.4f, val HR@1 %.4f", name, epoch, total_loss / len(train.records), val_hr)
        if val_hr > best_hr:
            best_hr, best_epoch, best_state = val_hr, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    return {"epochs": epoch, "best_epoch": best_epoch, "val_hr@1": best_hr}


def metrics_from_ranks(ranks: Sequence[int]) -> dict:
    """The shape of inference.py's metrics (`hr@1`, `valid_ratio`, `n`) plus the ranking metrics."""
    metrics = di.ranking_metrics(ranks)
    return {"hr@1": metrics["rank_hr@1"], "valid_ratio": 1.0, **metrics}


def prediction_rows(scores: Sequence[Sequence[float]], records: Sequence[di.Record], ranks: Sequence[int]) -> list[dict]:
    rows = []
    for index, (row, record, rank) in enumerate(zip(scores, records, ranks)):
        top = max(range(len(row)), key=row.__getitem__)  # first of the highest, as rank_of_target breaks ties
        rows.append({"index": index, "target": record.target, "prediction": record.candidates[top],
                     "rank": rank, "hit": rank == 1})
    return rows


def save_outputs(folder: Path, metrics: dict, rows: list[dict] | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if rows is not None:
        tmp = folder / (PREDICTIONS_FILE + ".tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        tmp.replace(folder / PREDICTIONS_FILE)
    runtime.save_json(folder / METRICS_FILE, metrics)


def reference_outputs(name: str, train: Sequence[di.Record], test: Sequence[di.Record]) -> tuple[dict, list | None]:
    """Popularity (candidates ranked by how often they are the true item in train) or random (exact
    expectation of a uniformly random ordering; no per-record predictions)."""
    if name == "random":
        return di.random_choice_metrics(test), None
    scores = di.popularity_scores(train, test)
    ranks = target_ranks(scores, test)
    return metrics_from_ranks(ranks), prediction_rows(scores, test, ranks)


def parse_models(model: str | Sequence[str]) -> list[str]:
    """`--model`: a name, `all`, or several names (comma-separated; fire passes `a,b` as a tuple)."""
    parts = model.split(",") if isinstance(model, str) else [str(name) for name in model]
    names = [name.strip().lower() for name in parts if name.strip()]
    known = (*MODELS, *REFERENCES)
    if not names:
        raise runtime.UsageError(f"--model is empty: use one of {', '.join(known)} or all")
    if names == ["all"]:
        return [*MODELS, *REFERENCES]
    for name in names:
        if name not in known:
            raise runtime.UsageError(f"unknown model '{name}': use one of {', '.join(known)} or all")
    return names


def format_table(results: dict) -> str:
    lines = [f"{'model':<12}{'HR@1':>8}{'NDCG@5':>8}{'MRR':>8}{'n':>7}{'train s':>9}{'epochs':>8}"]
    for name, m in results.items():
        seconds = f"{m['train_seconds']:.0f}" if "train_seconds" in m else "-"
        epochs = f"{m['best_epoch']}/{m['epochs']}" if "epochs" in m else "-"
        lines.append(f"{name:<12}{m['hr@1']:>8.4f}{m['rank_ndcg@5']:>8.4f}{m['rank_mrr']:>8.4f}{m['n']:>7}"
                     f"{seconds:>9}{epochs:>8}")
    return "\n".join(lines)


def run(
    dataset: str = "synthetic",
    model: str = "all",
    output_dir: str = "outputs/baselines",
    overwrite_output_dir: bool = False,
    train_file: str | None = None,
    val_file: str | None = None,
    test_file: str | None = None,
    max_samples: int | None = None,
    max_train_samples: int | None = None,
    max_val_samples: int | None = None,
    seed: int = 0,
    epochs: int = MAX_EPOCHS,
    patience: int = PATIENCE,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = LEARNING_RATE,
    embedding_dim: int = EMBEDDING_DIM,
    max_history: int = MAX_HISTORY,
    dropout: float | None = None,
    threads: int = THREADS,
    progress: bool = True,
) -> dict:
    """Train and evaluate each model of `model` (a name, a comma-separated list, or `all`); returns
    {model: metrics}. `max_samples` picks a seeded random sample of the test split
    (`di.sample_records`), as for every other method of a comparison; `dropout` None = each model's
    default (GRU4Rec 0.25, Caser 0.5, SASRec 0.2)."""
    names = parse_models(model)
    for value, flag in ((epochs, "epochs"), (patience, "patience"), (batch_size, "batch_size"),
                        (embedding_dim, "embedding_dim"), (max_history, "max_history"), (threads, "threads")):
        if int(value) < 1:
            raise runtime.UsageError(f"--{flag} must be at least 1, got {value}")
    output = Path(output_dir)
    for name in names:
        runtime.check_output_dir(output / name, overwrite_output_dir, METRICS_FILE)
    data = runtime.load_stage_data(("train", "val", "test"), dataset, train_file, val_file, test_file)
    train = di.sample_records(data.train, max_train_samples, seed)
    val = di.sample_records(data.val, max_val_samples, seed)
    test = di.sample_records(data.test, max_samples, seed)
    torch.set_num_threads(int(threads))
    vocabulary = item_vocabulary((data.train, data.val, data.test))
    splits = {split: encode(records, vocabulary, max_history)
              for split, records in (("train", train), ("val", val), ("test", test))}
    logger.info("%d items; %d train, %d val, %d test records", len(vocabulary), len(train), len(val), len(test))

    results: dict[str, dict] = {}
    for name in names:
        start = time.time()
        if name in REFERENCES:
            metrics, rows = reference_outputs(name, train, test)
        else:
            torch.manual_seed(seed)  # each model starts from the same state whether run alone or in `all`
            kwargs = {} if dropout is None else {"dropout": float(dropout)}
            net = MODELS[name](len(vocabulary), dim=int(embedding_dim), max_history=int(max_history), **kwargs)
            fit = train_model(name, net, splits["train"], splits["val"], int(epochs), int(patience),
                              int(batch_size), float(learning_rate), seed, progress)
            train_seconds = time.time() - start
            scores = candidate_scores(net, splits["test"])
            ranks = target_ranks(scores, test)
            metrics, rows = metrics_from_ranks(ranks), prediction_rows(scores, test, ranks)
            metrics.update(fit, train_seconds=round(train_seconds, 2), seed=seed)
        metrics["seconds"] = round(time.time() - start, 2)
        save_outputs(output / name, metrics, rows)
        results[name] = metrics
        print(f"{name}: HR@1 {metrics['hr@1']:.4f}  NDCG@5 {metrics['rank_ndcg@5']:.4f}  n {metrics['n']}  "
              f"({metrics['seconds']} s) -> {output / name / METRICS_FILE}")
    print(format_table(results))
    return results
