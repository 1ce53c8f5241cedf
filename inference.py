"""Evaluation: greedy generation (HR@1, ValidRatio) and candidate ranking (HR@K, NDCG@K, MRR).

    python inference.py --base_model tiny --resume_from_checkpoint outputs/sdpo/final_checkpoint \\
        --dataset synthetic --output_dir outputs/eval/sdpo

Generation (the paper's metric): greedy decoding of at most 20 new tokens. A generation is valid when
exactly one candidate name appears in it; it is a hit when that name is the true next item. Both are
divided by the number of test prompts (invalid outputs are misses). `metrics.json` also holds
`hr@1_original` and `valid_ratio_original`: the original release's plain substring count
(`data_interface.original_rule_metrics`).

`--constrained_decoding` adds a second greedy decoding restricted to the prompt's candidate names (a
prefix tree over their token ids, `constrained_decoding.py`; as many new tokens as the longest name
needs), so every output names one candidate. Its HR@1 and ValidRatio (same counting rule) go to
`constrained_hr@1` and `constrained_valid_ratio` beside the unconstrained metrics, which stay the
paper's, and each prediction row gets `constrained_output` and `constrained_prediction`.

Ranking: every candidate c of a prompt is scored by log p(" c" + EOS | prompt), with the same
completion log-prob function the S-DPO trainer optimises (the prompt encoded once, the 20 candidates
packed after it); the target's rank gives HR@1/3/5/10, NDCG@5/10 and MRR (`rank_*` keys). Ranking
needs no valid output, so it shows what a model learned even before it names items reliably.

Under torchrun (`torchrun --nproc_per_node 4 inference.py ...`, or NPROC=4 bash inference.sh) every process
evaluates every 4th chunk of prompts on its own GPU and the main process writes the same `predictions.jsonl`
and `metrics.json` as one process would (`processes` in metrics.json says how many shared the work).

`--max_samples N` evaluates a seeded random sample of N prompts across the split (the same for every
method with the same seed), never the first N. Writes `predictions.jsonl` (one line per prompt) and
`metrics.json` to `output_dir`.

Speed: prompts are sorted by length so a batch holds prompts of similar length (little padding),
generation uses the KV cache and stops as soon as every sequence of the batch has produced EOS, and a
LoRA adapter is merged into the weights before generating when the base is not quantized.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import data_interface as di
import models
import runtime
from constrained_decoding import CandidateTree, candidate_trees, constrained_metrics, generate_constraint

logger = logging.getLogger("sdpo.inference")
PARTIAL_DIR = "predictions.partial"  # finished chunks of an evaluation in progress
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
MAX_NEW_TOKENS = 20


def generate_outputs(model, tokenizer, prompts: Sequence[str], batch_size: int = 16,
                     max_new_tokens: int = MAX_NEW_TOKENS, cutoff_len: int | None = None,
                     sort_by_length: bool = True, progress: bool = True,
                     constraints: Sequence[CandidateTree] | None = None) -> list[str]:
    """Greedy continuations of `prompts`, decoded without special tokens, in the prompts' order.

    With `sort_by_length`, batches group prompts of similar token length; otherwise batches follow the
    given order (the plain batched `generate` baseline of the benchmark). With `constraints` (one
    `CandidateTree` per prompt), each continuation is one of its prompt's candidate completions.
    """
    import torch

    encoded = [di.encode_prompt(tokenizer, prompt, cutoff_len) for prompt in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i])) if sort_by_length else list(range(len(encoded)))
    outputs: list[str] = [""] * len(encoded)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    model.eval()
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    for batch in runtime.progress_bar(batches, "generating", progress):
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = encoded[index]
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        limits = ({"max_new_tokens": max_new_tokens} if constraints is None
                  else generate_constraint([constraints[i] for i in batch], width))
        with torch.inference_mode():
            generated = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                do_sample=False, num_beams=1, use_cache=True,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id, **limits,
            )
        texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        for index, text in zip(batch, texts):
            outputs[index] = text
    return outputs


def score_candidates(model, tokenizer, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                     batch_size: int = 16, cutoff_len: int | None = None, progress: bool = True) -> list[list[float]]:
    """log p(" name" + EOS | prompt) of every candidate name of every prompt, in the given order.

    Uses `trainer.completion_logps` (shared forward: each prompt encoded once, its candidates packed
    after it) on batches of prompts of similar length.
    """
    import torch
    from trainer import SoftmaxDPOCollator, completion_logps

    rows = [{"prompt_input_ids": di.encode_prompt(tokenizer, prompt, cutoff_len),
             "completion_input_ids": di.encode_completions(tokenizer, prompt, [di.completion_text(n) for n in names])}
            for prompt, names in zip(prompts, candidates)]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["prompt_input_ids"]))
    collate = SoftmaxDPOCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    scores: list[list[float]] = [[] for _ in rows]
    model.eval()
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    for batch in runtime.progress_bar(batches, "ranking", progress):
        # Candidate counts may differ between records: batch rows with the same count together.
        by_count: dict[int, list[int]] = {}
        for index in batch:
            by_count.setdefault(len(rows[index]["completion_input_ids"]), []).append(index)
        for group in by_count.values():
            tensors = {k: v.to(device) for k, v in collate([rows[i] for i in group]).items()}
            with torch.inference_mode():
                logps = completion_logps(model, tensors["prompt_input_ids"], tensors["prompt_attention_mask"],
                                         tensors["completion_input_ids"], tensors["completion_attention_mask"])
            for index, values in zip(group, logps.float().cpu().tolist()):
                scores[index] = values
    return scores


def generate_and_score(model, tokenizer, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                       batch_size: int = 16, max_new_tokens: int = MAX_NEW_TOKENS, cutoff_len: int | None = None,
                       progress: bool = True) -> tuple[list[str], list[list[float]]]:
    """`generate_outputs` and `score_candidates` with one prompt encoding per batch.

    Each batch of left-padded prompts is run once up to its second-to-last column into a KV cache; the
    last prompt token and the packed candidates are scored on top of that cache
    (`trainer.log_probs.completion_logps_after_cache`), the cache is cropped back, and `generate` continues
    from it, so it only encodes the last prompt token again. Same outputs and scores (up to float
    rounding) as the two functions run separately.
    """
    import torch
    from transformers import DynamicCache

    from trainer import SoftmaxDPOCollator
    from trainer.log_probs import completion_logps_after_cache

    encoded = [di.encode_prompt(tokenizer, prompt, cutoff_len) for prompt in prompts]
    completions = [di.encode_completions(tokenizer, prompt, [di.completion_text(n) for n in names])
                   for prompt, names in zip(prompts, candidates)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    scores: list[list[float]] = [[] for _ in encoded]
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    collate = SoftmaxDPOCollator(pad_id)
    model.eval()
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    for batch in runtime.progress_bar(batches, "generating and ranking", progress):
        # Candidate counts may differ between records: batch rows with the same count together.
        by_count: dict[int, list[int]] = {}
        for index in batch:
            by_count.setdefault(len(completions[index]), []).append(index)
        for group in by_count.values():
            tensors = {k: v.to(device) for k, v in collate(
                [{"prompt_input_ids": encoded[i], "completion_input_ids": completions[i]} for i in group]).items()}
            input_ids, attention_mask = tensors["prompt_input_ids"], tensors["prompt_attention_mask"]
            width = input_ids.shape[1]
            with torch.inference_mode():
                cache = DynamicCache()
                if width > 1:
                    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
                    model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                          position_ids=positions[:, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
                logps = completion_logps_after_cache(model, cache, input_ids, attention_mask,
                                                     tensors["completion_input_ids"],
                                                     tensors["completion_attention_mask"])
                generated = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                    max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id,
                )
            texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
            for index, text, values in zip(group, texts, logps.float().cpu().tolist()):
                outputs[index], scores[index] = text, values
    return outputs, scores


def evaluate_records(model, tokenizer, records: Sequence[di.Record], templates: Sequence[str], seed: int = 0,
                     batch_size: int = 16, cutoff_len: int | None = None, sort_by_length: bool = True,
                     progress: bool = True, generation: bool = True, ranking: bool = True,
                     shared_prefill: bool = True, constrained: bool = False) -> tuple[dict, list[dict]]:
    """Generate for and/or rank the candidates of every record; returns (metrics, per-prompt rows).

    `constrained`: also decode greedily restricted to each record's candidates (`constrained_*` keys).
    """
    if not (generation or ranking or constrained):
        raise runtime.UsageError("nothing to evaluate: --generation, --ranking and --constrained_decoding are off")
    prompts = [di.build_prompt(record, templates, seed) for record in records]
    rows = [{"index": i, "target": record.target} for i, record in enumerate(records)]
    metrics: dict = {"n": len(records)}
    scores = None
    if generation and ranking and shared_prefill:
        outputs, scores = generate_and_score(model, tokenizer, prompts, [record.candidates for record in records],
                                             batch_size, cutoff_len=cutoff_len, progress=progress)
    elif generation:
        outputs = generate_outputs(model, tokenizer, prompts, batch_size, cutoff_len=cutoff_len,
                                   sort_by_length=sort_by_length, progress=progress)
    if generation:
        predictions = [di.prediction_of(output, record.candidates) for output, record in zip(outputs, records)]
        for row, output, prediction in zip(rows, outputs, predictions):
            row.update(output=output, prediction=prediction, valid=prediction is not None,
                       hit=prediction == row["target"])
        metrics.update(di.recommendation_metrics(predictions, [record.target for record in records]))
        metrics.update(di.original_rule_metrics(outputs, records))  # the original release's counting rule
    if ranking:
        if scores is None:
            scores = score_candidates(model, tokenizer, prompts, [record.candidates for record in records],
                                      batch_size, cutoff_len, progress)
        ranks = [di.rank_of_target(values, record.candidates, record.target) for values, record in zip(scores, records)]
        for row, rank, values, record in zip(rows, ranks, scores, records):
            row.update(target_rank=rank, ranked_first=record.candidates[max(range(len(values)), key=values.__getitem__)])
        metrics.update(di.ranking_metrics(ranks))
    if constrained:
        trees = candidate_trees(tokenizer, prompts, [record.candidates for record in records])
        constrained_outputs = generate_outputs(model, tokenizer, prompts, batch_size, cutoff_len=cutoff_len,
                                               sort_by_length=sort_by_length, progress=progress, constraints=trees)
        for row, output, record in zip(rows, constrained_outputs, records):
            row.update(constrained_output=output, constrained_prediction=di.prediction_of(output, record.candidates))
        metrics.update(constrained_metrics([row["constrained_prediction"] for row in rows],
                                           [record.target for record in records]))
    return metrics, rows


def metrics_of_rows(rows: Sequence[dict], records: Sequence[di.Record], generation: bool, ranking: bool,
                    constrained: bool = False) -> dict:
    """The metrics of prediction rows (`evaluate_records`' rows, in record order)."""
    metrics: dict = {"n": len(records)}
    targets = [record.target for record in records]
    if generation:
        metrics.update(di.recommendation_metrics([row["prediction"] for row in rows], targets))
        metrics.update(di.original_rule_metrics([row["output"] for row in rows], records))
    if ranking:
        metrics.update(di.ranking_metrics([row["target_rank"] for row in rows]))
    if constrained:
        metrics.update(constrained_metrics([row["constrained_prediction"] for row in rows], targets))
    return metrics


class EvaluationChunks:
    """The finished chunks of one evaluation, each a JSON file written atomically in `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, number: int) -> Path:
        return self.folder / f"chunk-{number:05d}.json"

    def done(self, number: int) -> bool:
        return self._path(number).exists()

    def save(self, number: int, rows: list[dict], seconds: float) -> None:
        runtime.save_json(self._path(number), {"seconds": seconds, "rows": rows})

    def load_all(self, count: int) -> tuple[list[dict], float]:
        rows, seconds = [], 0.0
        for number in range(count):
            chunk = json.loads(self._path(number).read_text(encoding="utf-8"))
            rows += chunk["rows"]
            seconds += chunk["seconds"]
        return rows, seconds

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def open_chunks(folder: Path, flags: dict, checkpoint: str | None) -> EvaluationChunks:
    """The chunk store of this evaluation; chunks left by a run with other flags or another checkpoint
    state are discarded (never mixed into this run's metrics)."""
    import shutil

    identity = {key: value for key, value in flags.items() if key not in ("overwrite_output_dir",)}
    weights = sorted(Path(checkpoint).glob("*.safetensors")) if checkpoint else []
    identity["checkpoint_files"] = [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in weights]
    identity = json.loads(json.dumps(identity, default=str))
    marker = folder / "flags.json"
    if folder.exists():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous != identity:
            logger.warning("%s: discarding chunks of an evaluation with other flags or another checkpoint", folder)
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        runtime.save_json(marker, identity)
    return EvaluationChunks(folder)


class Processes:
    """The processes of this evaluation: one, or those of a torchrun launch (one per GPU), which split the
    chunks between them and meet at barriers."""

    def __init__(self):
        import hardware

        self.count = hardware.world_size()
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        if self.count > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                on_cuda = models.compute_device() == "cuda"
                if on_cuda:
                    import torch

                    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
                dist.init_process_group("nccl" if on_cuda else "gloo")

    def wait(self) -> None:
        if self.count > 1:
            import torch.distributed as dist

            dist.barrier()


def load_for_generation(base_model: str, checkpoint: str | None, data: runtime.StageData, seed: int,
                        load_in_4bit: bool | str = "auto", double_quant: bool = False):
    """Base model plus (optionally) a frozen adapter, merged for speed when the base is not quantized.

    A 4-bit base is loaded without the k-bit *training* preparation (fp32 norms, embeddings, head).
    """
    base = runtime.base_model_path(base_model, checkpoint, data, seed)
    tokenizer = models.load_tokenizer(runtime.tokenizer_path(base, checkpoint))
    # A model trained in full (the tiny one, or its untrained start) is evaluated with fp32 weights on every device.
    full_precision = runtime.is_full_model(checkpoint) or (checkpoint is None and base_model in models.TINY_MODELS)
    model = models.load_base_model(base, load_in_4bit=load_in_4bit, double_quant=double_quant, for_training=False,
                                   full_precision=full_precision)
    if checkpoint and not runtime.is_full_model(checkpoint):
        model = models.load_adapter(model, checkpoint, trainable=False)
        if not getattr(model, "is_loaded_in_4bit", False) and models.compute_device() == "cpu":
            model = model.merge_and_unload()
    return model, tokenizer


def evaluate(
    base_model: str = "tiny",
    resume_from_checkpoint: str | None = None,
    dataset: str = "synthetic",
    test_file: str | None = None,
    prompt_path: str | None = None,
    output_dir: str = "outputs/eval",
    overwrite_output_dir: bool = False,
    batch_size: int = 16,
    max_samples: int | None = None,
    cutoff_len: int = 512,
    generation: bool = True,
    ranking: bool = True,
    bf16: bool | None = None,
    load_in_4bit: bool | str = "auto",
    bnb_4bit_use_double_quant: bool = False,
    seed: int = 0,
    chunk_size: int = 1024,
    shared_prefill: bool = True,
    constrained_decoding: bool = False,
) -> dict:
    """Evaluate a model (optionally with an adapter) on the test split; returns the metrics.

    Prompts are evaluated in chunks of `chunk_size`; each finished chunk is saved atomically under
    `output_dir/predictions.partial/`, so a killed run started again with the same flags continues after
    the last finished chunk (and gives the files an uninterrupted run gives). The chunks are removed once
    `predictions.jsonl` and `metrics.json` are written. `constrained_decoding` adds the decoding restricted
    to the candidates (`constrained_hr@1`, `constrained_valid_ratio`) beside the unconstrained metrics.
    """
    flags = dict(locals())
    runtime.check_load_in_4bit(load_in_4bit)
    if chunk_size < 1:
        raise runtime.UsageError(f"--chunk_size must be at least 1, got {chunk_size}")
    output = runtime.check_output_dir(output_dir, overwrite_output_dir, METRICS_FILE)
    runtime.check_checkpoint(resume_from_checkpoint)
    data = runtime.load_stage_data(("test",), dataset, None, None, test_file, prompt_path)
    records = di.sample_records(data.test, max_samples, seed)
    processes = Processes()
    if processes.main:  # one process checks (and may discard) the chunks of an earlier run
        chunks = open_chunks(output / PARTIAL_DIR, flags, resume_from_checkpoint)
    processes.wait()
    chunks = EvaluationChunks(output / PARTIAL_DIR)
    starts = range(0, len(records), chunk_size)
    # Under torchrun every process takes every `count`-th chunk; the main process gathers the chunk files.
    todo = [(number, start) for number, start in enumerate(starts)
            if number % processes.count == processes.rank and not chunks.done(number)]
    share = len(starts[processes.rank::processes.count])
    if processes.count > 1:
        logger.info("process %d of %d: %d of %d chunks", processes.rank, processes.count, share, len(starts))
    if len(todo) < share:
        logger.info("continuing an interrupted evaluation: %d of %d chunks already done", share - len(todo), share)
    if todo:
        model, tokenizer = load_for_generation(base_model, resume_from_checkpoint, data, seed, load_in_4bit,
                                               bnb_4bit_use_double_quant)
    for number, start in todo:
        begin = time.time()
        with runtime.autocast(bf16):
            _, rows = evaluate_records(model, tokenizer, records[start:start + chunk_size], data.templates, seed,
                                       batch_size, cutoff_len, generation=generation, ranking=ranking,
                                       shared_prefill=shared_prefill, constrained=constrained_decoding)
        for row in rows:
            row["index"] += start
        chunks.save(number, rows, time.time() - begin)
    processes.wait()
    if not processes.main:
        processes.wait()  # returns once the main process has written the files
        return json.loads((output / METRICS_FILE).read_text(encoding="utf-8"))
    rows, seconds = chunks.load_all(len(starts))
    metrics = metrics_of_rows(rows, records, generation, ranking, constrained_decoding)
    metrics["seed"] = seed  # with `n`, the sample of test prompts (results.py computes its reference rows on it)
    metrics["seconds"] = round(seconds, 2)  # summed over chunks: the compute time of all processes
    metrics["processes"] = processes.count
    metrics["checkpoint"] = resume_from_checkpoint
    metrics["bf16"] = runtime.use_bf16(bf16)

    tmp = output / (PREDICTIONS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(output / PREDICTIONS_FILE)
    runtime.save_json(output / METRICS_FILE, metrics)
    chunks.remove()
    processes.wait()
    shown = [f"{label} {metrics[key]:.4f}" for label, key in
             (("HR@1", "hr@1"), ("ValidRatio", "valid_ratio"), ("constrained HR@1", "constrained_hr@1"),
              ("rank HR@1", "rank_hr@1"), ("NDCG@5", "rank_ndcg@5"))
             if key in metrics]
    print(f"{'  '.join(shown)}  n {metrics['n']}  ({metrics['seconds']} s) -> {output / METRICS_FILE}")
    return metrics


if __name__ == "__main__":
    runtime.main(evaluate)
