"""Evaluation: greedy generation of at most 20 new tokens, then HR@1 and ValidRatio.

    python inference.py --base_model tiny --resume_from_checkpoint outputs/sdpo/final_checkpoint \\
        --dataset synthetic --output_dir outputs/eval/sdpo

A generation is valid when exactly one candidate name appears in it; it is a hit when that name is
the true next item. Both are divided by the number of test prompts (invalid outputs are misses).
`metrics.json` also holds `hr@1_original` and `valid_ratio_original`: the original release's plain
substring count (`data_interface.original_rule_metrics`). Writes `predictions.jsonl` (one line per prompt) and `metrics.json` to `output_dir`.

Speed: prompts are sorted by length so a batch holds prompts of similar length (little padding),
generation uses the KV cache and stops as soon as every sequence of the batch has produced EOS, and a
LoRA adapter is merged into the weights before generating when the base is not quantized.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import data_interface as di
import models
import runtime

logger = logging.getLogger("sdpo.inference")
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
MAX_NEW_TOKENS = 20


def generate_outputs(model, tokenizer, prompts: Sequence[str], batch_size: int = 16,
                     max_new_tokens: int = MAX_NEW_TOKENS, cutoff_len: int | None = None,
                     sort_by_length: bool = True, progress: bool = True) -> list[str]:
    """Greedy continuations of `prompts`, decoded without special tokens, in the prompts' order.

    With `sort_by_length`, batches group prompts of similar token length; otherwise batches follow the
    given order (the plain batched `generate` baseline of the benchmark).
    """
    import torch
    from tqdm.auto import tqdm

    encoded = [di.encode_prompt(tokenizer, prompt, cutoff_len) for prompt in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i])) if sort_by_length else list(range(len(encoded)))
    outputs: list[str] = [""] * len(encoded)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    model.eval()
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="generating", disable=not progress):
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = encoded[index]
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        with torch.inference_mode():
            generated = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id,
            )
        texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        for index, text in zip(batch, texts):
            outputs[index] = text
    return outputs


def evaluate_records(model, tokenizer, records: Sequence[di.Record], templates: Sequence[str], seed: int = 0,
                     batch_size: int = 16, cutoff_len: int | None = None, sort_by_length: bool = True,
                     progress: bool = True) -> tuple[dict, list[dict]]:
    """Generate for every record; returns (metrics, per-prompt prediction rows)."""
    prompts = [di.build_prompt(record, templates, seed) for record in records]
    outputs = generate_outputs(model, tokenizer, prompts, batch_size, cutoff_len=cutoff_len,
                               sort_by_length=sort_by_length, progress=progress)
    predictions = [di.prediction_of(output, record.candidates) for output, record in zip(outputs, records)]
    rows = [
        {"index": i, "output": output, "prediction": prediction, "target": record.target,
         "valid": prediction is not None, "hit": prediction == record.target}
        for i, (output, prediction, record) in enumerate(zip(outputs, predictions, records))
    ]
    metrics = di.recommendation_metrics(predictions, [record.target for record in records])
    metrics.update(di.original_rule_metrics(outputs, records))  # the original release's counting rule
    return metrics, rows


def load_for_generation(base_model: str, checkpoint: str | None, data: runtime.StageData, seed: int,
                        load_in_4bit: bool | str = "auto", double_quant: bool = False):
    """Base model plus (optionally) a frozen adapter, merged for speed when the base is not quantized.

    A 4-bit base is loaded without the k-bit *training* preparation (fp32 norms, embeddings, head).
    """
    base = runtime.base_model_path(base_model, checkpoint, data, seed)
    tokenizer = models.load_tokenizer(runtime.tokenizer_path(base, checkpoint))
    model = models.load_base_model(base, load_in_4bit=load_in_4bit, double_quant=double_quant, for_training=False)
    if checkpoint:
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
    load_in_4bit: bool | str = "auto",
    bnb_4bit_use_double_quant: bool = False,
    seed: int = 0,
) -> dict:
    """Evaluate a model (optionally with an adapter) on the test split; returns the metrics."""
    runtime.check_load_in_4bit(load_in_4bit)
    output = runtime.check_output_dir(output_dir, overwrite_output_dir, METRICS_FILE)
    runtime.check_checkpoint(resume_from_checkpoint)
    data = runtime.load_stage_data(("test",), dataset, None, None, test_file, prompt_path)
    records = data.test[:max_samples] if max_samples else data.test
    model, tokenizer = load_for_generation(base_model, resume_from_checkpoint, data, seed, load_in_4bit,
                                           bnb_4bit_use_double_quant)
    start = time.time()
    metrics, rows = evaluate_records(model, tokenizer, records, data.templates, seed, batch_size, cutoff_len)
    metrics["seconds"] = round(time.time() - start, 2)
    metrics["checkpoint"] = resume_from_checkpoint
    output.mkdir(parents=True, exist_ok=True)
    import json

    tmp = output / (PREDICTIONS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(output / PREDICTIONS_FILE)
    runtime.save_json(output / METRICS_FILE, metrics)
    print(f"HR@1 {metrics['hr@1']:.4f}  ValidRatio {metrics['valid_ratio']:.4f}  n {metrics['n']}  "
          f"({metrics['seconds']} s) -> {output / METRICS_FILE}")
    return metrics


if __name__ == "__main__":
    runtime.main(evaluate)
