"""What the paper profile costs on GPUs, estimated from the data's token counts and the model's FLOPs.

    python benchmarks/paper_cost.py --dataset lastfm                       # SmolLM2's tokenizer (offline)
    python benchmarks/paper_cost.py --dataset lastfm --tokenizer /models/Llama-2-7b-hf

Method (printed with the numbers):
- tokens: every training prompt and its completion, tokenized; SFT sees prompt + completion once per epoch; a
  preference step sees the prompt once and 1 + N completions (`--forward shared`).
- FLOPs per token of a 7B decoder: forward 2P. LoRA on a frozen 4-bit base: backward computes the activations'
  gradients only (2P, no weight gradients of the base), gradient checkpointing repeats the forward (2P): 6P per
  trained token; the reference model's forward is 2P more per preference token.
- time = FLOPs / (GPUs x peak bf16 FLOP/s x utilisation). The utilisation of 4-bit QLoRA (dequantisation,
  small matrices, checkpointing) is assumed, not measured here: `--utilisation` (default 0.25).
- memory per GPU: NF4 weights (4.5 bits per parameter with their scales), fp32 embeddings and head (k-bit
  preparation), fp32 LoRA weights with two Adam moments, checkpointed hidden states of a micro-batch.
"""

from __future__ import annotations

import statistics

import data_interface as di
import models
import runtime

LLAMA2_7B = dict(parameters=6.74e9, hidden=4096, layers=32, vocab=32000, intermediate=11008)
A100_BF16_FLOPS = 312e12  # dense, NVIDIA's datasheet


def token_counts(dataset: str, tokenizer_name: str, negatives: int, sample: int = 4000) -> dict:
    data = runtime.load_stage_data(("train",), dataset)
    path = models.resolve_model_path(tokenizer_name)
    tokenizer = models.load_tokenizer(path)
    records = di.sample_records(data.train, sample, 0)
    rows = di.build_sft_rows(records, data.templates, 0)
    prompts = [len(di.encode_prompt(tokenizer, row["prompt"])) for row in rows]
    completions = [len(ids) for row in rows for ids in di.encode_completions(tokenizer, row["prompt"],
                                                                               [row["completion"]])]
    prompt, completion = statistics.mean(prompts), statistics.mean(completions)
    return {"records": len(data.train), "prompt": prompt, "completion": completion,
            "sft_tokens": len(data.train) * (prompt + completion),
            "preference_tokens": len(data.train) * (prompt + (1 + negatives) * completion)}


def estimate(dataset: str = "lastfm", tokenizer: str = models.SMOLLM2, negatives: int = 3, sft_epochs: int = 5,
             preference_epochs: int = 3, gpus: int = 4, utilisation: float = 0.25, batch_size: int = 4,
             lora_r: int = 8, reported_sft_hours: float = 6.0, reported_gpus: int = 4) -> None:
    """Print the token counts, FLOPs, time and memory of the paper profile's SFT and S-DPO stages."""
    counts = token_counts(dataset, tokenizer, negatives)
    p = LLAMA2_7B["parameters"]
    throughput = gpus * A100_BF16_FLOPS * utilisation
    sft_flops = 6 * p * counts["sft_tokens"] * sft_epochs
    preference_flops = (6 + 2) * p * counts["preference_tokens"] * preference_epochs
    h, layers, vocab, inter = (LLAMA2_7B[k] for k in ("hidden", "layers", "vocab", "intermediate"))
    lora = layers * lora_r * (4 * 2 * h + 3 * (h + inter))  # q, k, v, o and gate, up, down: A and B each
    weights = p * 4.5 / 8 + 2 * vocab * h * 4 + lora * 4 * 3
    sequence = counts["prompt"] + counts["completion"]
    sft_activations = batch_size * sequence * h * 2 * layers * 2  # checkpointed bf16 hidden states, x2 headroom
    preference_sequence = counts["prompt"] + (1 + negatives) * counts["completion"]
    preference_activations = batch_size * preference_sequence * h * 2 * layers * 2
    print(f"tokenizer {tokenizer}; {dataset}: {counts['records']:,} training prompts, mean prompt "
          f"{counts['prompt']:.0f} tokens, completion {counts['completion']:.1f}")
    print(f"Llama-2-7B ({p / 1e9:.2f}B), {gpus} x A100 at {utilisation:.0%} of {A100_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16")
    print("| stage | tokens per epoch | epochs | FLOPs | time | memory per GPU |")
    print("|---|---|---|---|---|---|")
    print(f"| SFT | {counts['sft_tokens'] / 1e6:.1f} M | {sft_epochs} | {sft_flops:.2e} | "
          f"{sft_flops / throughput / 3600:.1f} h | {(weights + sft_activations) / 2**30:.0f} GiB + one layer's "
          "recompute |")
    print(f"| S-DPO (N = {negatives}) | {counts['preference_tokens'] / 1e6:.1f} M | {preference_epochs} | "
          f"{preference_flops:.2e} | {preference_flops / throughput / 3600:.1f} h | "
          f"{(weights + preference_activations) / 2**30:.0f} GiB + one layer's recompute |")
    concat_flops = preference_flops * (1 + negatives) * sequence / preference_sequence
    print(f"| S-DPO, 1 + N full copies (`--forward concat`, as the original) | "
          f"{counts['preference_tokens'] * (1 + negatives) * sequence / preference_sequence / 1e6:.1f} M | "
          f"{preference_epochs} | {concat_flops:.2e} | {concat_flops / throughput / 3600:.1f} h | more |")
    implied = sft_flops / (reported_sft_hours * 3600 * reported_gpus)
    print(f"Cross-check: {reported_sft_hours:g} h of SFT on {reported_gpus} GPUs (the authors' report, on RTX A5000) "
          f"means {implied / 1e12:.0f} TFLOP/s per GPU at these FLOPs; at that rate per A100 the SFT takes "
          f"{sft_flops / (gpus * implied) / 3600:.1f} h and S-DPO {preference_flops / (gpus * implied) / 3600:.1f} h.")


if __name__ == "__main__":
    runtime.main(estimate)
