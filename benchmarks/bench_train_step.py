"""Cost of one S-DPO optimizer step against one SFT step, and of evaluation, on the same prompts and model.

    python -m benchmarks.bench_train_step                          # tiny model, 2 threads, batch 4, N = 1 3 7 15
    python -m benchmarks.bench_train_step --json bench.json --steps 5 --warmup 2
    python -m benchmarks.bench_train_step --model_name smollm2-135m   # pretrained, 49k vocabulary

Each mode runs in a fresh subprocess (so its peak resident memory is its own), builds the same model with the same
LoRA adapter (r=8 on q/k/v/o/gate/up/down) and the same random prompts, does ``--warmup`` steps, then times
``--steps`` full optimizer steps (forward, backward, AdamW update) and reports the median:

* ``sft``: prompt + chosen, next-token loss on the completion only, the standard way (``model(..., labels=...)``,
  logits for every position), as an SFT trainer does it;
* ``sft_lean``: the same loss through ``completion_logps`` (logits only where a completion token is predicted);
* ``sft_trl``: the same loss through trl's fused LM head as its ``SFTTrainer`` runs it on a CPU (every position
  projected, in tiles); ``sft_trl_compact``: the same with ``trainer.compact_lm_head`` (labelled positions only), as
  ``sft.py`` runs it;
* ``concat_N``: S-DPO with N negatives, B*(1+N) full prompt+completion sequences, log-softmax at every position
  (the original code's way); ``concat_lean_N`` (largest N only) takes the log-softmax on completion positions only;
* ``shared_N``: S-DPO with N negatives, each prompt encoded once with its 1+N completions packed after it;
* ``shared_ref_N``: ``shared_N`` plus the on-the-fly reference (a frozen second adapter run under no_grad each step).

``concat_N``/``shared_N`` use precomputed reference log-probs (computed once before timing), so their step is
policy-only, as with ``precompute_ref_log_probs=True``. Peak RSS is ``ru_maxrss`` of the mode's process (it includes
the interpreter, libraries and model); ``step_rss_mb`` is the growth of that peak during the training steps
(warm-up and timed), i.e. what the step itself costs.

Evaluation throughput (prompts/s, greedy, 20 new tokens): ``naive`` = batched ``generate`` in the given order on the
un-merged PEFT model; ``ours`` = ``inference.generate_outputs`` (batches sorted by prompt length) on the model with
the LoRA merged, as ``inference.py`` runs it. Generation plus ranking of 20 candidates (``--completion_len`` tokens
each): ``generate_outputs`` then ``score_candidates`` (two passes over each prompt) against ``generate_and_score``
(one prefill shared by both, ``inference.py``'s default when both are asked for).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python benchmarks/bench_train_step.py`: run it as the module it is
    import os
    import sys
    from pathlib import Path

    _repo = str(Path(__file__).resolve().parents[1])
    _path = os.pathsep.join(p for p in (_repo, os.environ.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "benchmarks.bench_train_step", *sys.argv[1:]]
    os.execve(sys.executable, command, {**os.environ, "PYTHONPATH": _path})

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

logger = logging.getLogger("bench_train_step")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Used when models.py (the project's model loader) cannot be imported: the same architecture as its tiny model.
FALLBACK_TINY_CONFIG = dict(
    hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
    max_position_embeddings=1024, tie_word_embeddings=False,
)
TINY_VOCAB = 8000
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


# ---- model and data ----------------------------------------------------------------------------------------------


def build_model(model_name: str, seed: int):
    """The base causal LM in fp32 on CPU: a random LLaMA for ``tiny``, else a checkpoint via models.py."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if model_name == "tiny":
        try:
            import models

            architecture = models.tiny_config()  # $SDPO_TINY_CONFIG overrides fields, as for the stages
        except ImportError:
            architecture = dict(FALLBACK_TINY_CONFIG)
        config = LlamaConfig(
            vocab_size=TINY_VOCAB, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
            attn_implementation="sdpa", **architecture,
        )
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)
    import models

    path = models.resolve_model_path(model_name)
    return models.load_base_model(path, load_in_4bit=False)


def attach_lora(model, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def make_rows(args, vocab_size: int) -> list[dict]:
    """``batch_size`` rows with prompts of about ``prompt_len`` tokens (+-20%) and ``max(ns)+1`` completions of about
    ``completion_len`` tokens (ending with EOS). Deterministic: every mode sees the same ids."""
    import torch

    g = torch.Generator().manual_seed(args.seed)
    num_completions = 1 + max(args.ns)
    spread = max(1, args.prompt_len // 5)
    rows = []
    for _ in range(args.batch_size):
        length = args.prompt_len + int(torch.randint(-spread, spread + 1, (1,), generator=g))
        prompt = [BOS_ID] + torch.randint(3, vocab_size, (length - 1,), generator=g).tolist()
        completions = []
        for _ in range(num_completions):
            n = max(1, args.completion_len - 1 + int(torch.randint(-2, 3, (1,), generator=g)))
            completions.append(torch.randint(3, vocab_size, (n,), generator=g).tolist() + [EOS_ID])
        rows.append({"prompt_input_ids": prompt, "completion_input_ids": completions})
    return rows


# ---- one step per mode -------------------------------------------------------------------------------------------


def sft_step_fn(model, rows, lean: bool, fused: bool = False):
    """SFT on prompt + chosen with the loss on completion tokens only (``fused``: through trl's fused LM head,
    which the caller added to the model)."""
    import torch

    from trainer import SoftmaxDPOCollator, completion_logps

    if lean:
        batch = SoftmaxDPOCollator(PAD_ID)([{**r, "completion_input_ids": r["completion_input_ids"][:1]} for r in rows])
        keys = ("prompt_input_ids", "prompt_attention_mask", "completion_input_ids", "completion_attention_mask")
        num_tokens = batch["completion_attention_mask"].sum()

        def loss_fn():
            return -completion_logps(model, *(batch[k] for k in keys)).sum() / num_tokens

        return loss_fn

    # The usual SFT layout: prompt + completion, right-padded, labels -100 outside the completion.
    sequences = [r["prompt_input_ids"] + r["completion_input_ids"][0] for r in rows]
    width = max(map(len, sequences))
    input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for b, (row, seq) in enumerate(zip(rows, sequences)):
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention_mask[b, : len(seq)] = 1
        labels[b, len(row["prompt_input_ids"]) : len(seq)] = torch.tensor(row["completion_input_ids"][0])

    def loss_fn():
        if fused:
            return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True).loss
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    return loss_fn


def concat_lean_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask):
    """``forward="concat"`` with one saving the original code does not have: log-softmax only over the positions
    that predict completion tokens. Reported next to concat to separate the two effects."""
    import torch

    batch_size, prompt_len = prompt_ids.shape
    _, k, c = completion_ids.shape
    ids = torch.cat([prompt_ids.repeat_interleave(k, 0), completion_ids.reshape(batch_size * k, c)], 1)
    mask = torch.cat([prompt_mask.repeat_interleave(k, 0), completion_mask.reshape(batch_size * k, c)], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    logps = logits[:, prompt_len - 1 : -1].float().log_softmax(-1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
    return (logps * mask[:, prompt_len:]).sum(-1).view(batch_size, k)


def sdpo_step_fn(model, rows, num_negatives: int, forward: str, reference_adapter: str | None):
    """S-DPO with ``num_negatives`` negatives; the reference is precomputed, or run on the fly from
    ``reference_adapter``."""
    from trainer import SoftmaxDPOCollator, completion_logps, sdpo_loss
    from trainer.softmax_dpo_trainer import reference_mode

    rows = [{**r, "completion_input_ids": r["completion_input_ids"][: 1 + num_negatives]} for r in rows]
    batch = SoftmaxDPOCollator(PAD_ID)(rows)
    inputs = [batch[k] for k in ("prompt_input_ids", "prompt_attention_mask", "completion_input_ids",
                                 "completion_attention_mask")]

    def logps():
        if forward == "concat_lean":
            return concat_lean_logps(model, *inputs)
        return completion_logps(model, *inputs, forward=forward)

    def reference():
        with reference_mode(model, reference_adapter):
            return logps()

    precomputed = None if reference_adapter else reference()

    def loss_fn():
        ref = reference() if reference_adapter else precomputed
        policy = logps()
        losses, _, _ = sdpo_loss(policy[:, 0], policy[:, 1:], ref[:, 0], ref[:, 1:], beta=1.0)
        return losses.mean()

    return loss_fn


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_mode(args) -> dict:
    """Time ``args.mode`` in this process; returns {"median_s", "median_cpu_s", "step_s", "peak_rss_mb",
    "step_rss_mb"}."""
    import torch

    torch.set_num_threads(args.threads)
    base = build_model(args.model_name, args.seed)
    if args.mode.startswith("sft_trl"):
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # as trl's SFTTrainer adds it
        if args.mode == "sft_trl_compact":
            from trainer.compact_lm_head import compact_lm_head_on_cpu

            compact_lm_head_on_cpu()
    model = attach_lora(base, args.seed)
    rows = make_rows(args, model.config.vocab_size)
    mode, _, n = args.mode.rpartition("_") if args.mode[-1].isdigit() else (args.mode, "", "")
    if mode == "shared_ref":
        # A second, frozen adapter of the same shape stands for the SFT reference (the cost does not depend on its
        # weights); set_adapter makes "default" the trainable one again.
        model.add_adapter("reference", model.peft_config["default"])
        model.set_adapter("default")
    model.train()
    if mode in ("sft", "sft_lean"):
        loss_fn = sft_step_fn(model, rows, lean=mode == "sft_lean")
    elif mode.startswith("sft_trl"):
        loss_fn = sft_step_fn(model, rows, lean=False, fused=True)
    else:
        forward = mode if mode in ("concat", "concat_lean") else "shared"
        loss_fn = sdpo_step_fn(model, rows, int(n), forward, "reference" if mode == "shared_ref" else None)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()

    rss_before = peak_rss_mb()  # interpreter, libraries, model, data (and the precomputed reference pass)
    for _ in range(args.warmup):
        step()
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "median_s": statistics.median(times),
        # CPU seconds of the process (all threads): less sensitive than wall time to other jobs on the machine.
        "median_cpu_s": statistics.median(cpu_times),
        "step_s": times,
        "peak_rss_mb": peak_rss_mb(),
        "step_rss_mb": peak_rss_mb() - rss_before,
    }


# ---- evaluation throughput ---------------------------------------------------------------------------------------


class _IdTokenizer:
    """Just enough of a tokenizer for ``inference.generate_outputs`` on prompts given as token ids: a prompt is the
    ids joined by spaces."""

    pad_token_id, bos_token_id, eos_token_id = PAD_ID, BOS_ID, EOS_ID

    def __call__(self, text, **_):
        if isinstance(text, str):
            return {"input_ids": [int(t) for t in text.split()]}
        return {"input_ids": [[int(t) for t in one.split()] for one in text]}

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row if int(t) not in (PAD_ID, BOS_ID, EOS_ID)) for row in ids]


def eval_prompts_per_s(args) -> dict:
    """Greedy generation throughput of the policy (prompts/s): {"naive": ..., "ours": ...}."""
    import torch

    torch.set_num_threads(args.threads)
    model = attach_lora(build_model(args.model_name, args.seed), args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    spread = max(1, args.prompt_len // 3)
    lengths = [args.prompt_len + int(torch.randint(-spread, spread + 1, (1,), generator=g)) for _ in range(args.eval_prompts)]
    prompts = [[BOS_ID] + torch.randint(3, model.config.vocab_size, (n - 1,), generator=g).tolist() for n in lengths]
    max_new_tokens = 20

    def naive(peft_model, prompts, batch_size):
        # The plain recipe: fixed-order batches, LoRA kept as separate matmuls, no_grad.
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, p in enumerate(chunk):
                ids[b, width - len(p) :] = torch.tensor(p)
                mask[b, width - len(p) :] = 1
            with torch.no_grad():
                peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=PAD_ID, eos_token_id=EOS_ID)

    try:
        import inference

        def ours(merged_model, prompts, batch_size):
            inference.generate_outputs(merged_model, _IdTokenizer(), [" ".join(map(str, p)) for p in prompts],
                                       batch_size=batch_size, max_new_tokens=max_new_tokens,
                                       sort_by_length=True, progress=False)
    except ImportError:  # without the project's evaluator: the merged model with the naive loop
        logger.warning("inference.py not importable: 'ours' = merged LoRA with the naive loop")
        ours = naive

    def prompts_per_s(fn, eval_model, batch_size):
        # Best of two passes after a warm-up batch: other jobs on the machine only ever add time.
        eval_model.eval()
        fn(eval_model, prompts[:batch_size], batch_size)
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            fn(eval_model, prompts, batch_size)
            seconds.append(time.perf_counter() - start)
        return len(prompts) / min(seconds)

    naive_by_batch = {str(b): prompts_per_s(naive, model, b) for b in args.naive_eval_batch_sizes}
    result = {"naive": naive_by_batch[str(args.naive_eval_batch_sizes[0])], "naive_by_batch": naive_by_batch}
    merged = model.merge_and_unload()
    result["ours"] = prompts_per_s(ours, merged, args.eval_batch_size)
    if "inference" in sys.modules:  # generation + ranking of 20 candidates: two passes vs one shared prefill
        texts = [" ".join(map(str, p)) for p in prompts]
        names = [[" ".join(str(int(t)) for t in torch.randint(3, model.config.vocab_size, (args.completion_len - 1,),
                                                               generator=g)) for _ in range(20)] for _ in prompts]

        def separate(eval_model, prompts, batch_size):
            count = len(prompts)
            inference.generate_outputs(eval_model, _IdTokenizer(), texts[:count], batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, progress=False)
            inference.score_candidates(eval_model, _IdTokenizer(), texts[:count], names[:count], batch_size=batch_size,
                                       progress=False)

        def shared(eval_model, prompts, batch_size):
            count = len(prompts)
            inference.generate_and_score(eval_model, _IdTokenizer(), texts[:count], names[:count],
                                         batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False)

        # Alternate the two and keep each one's fastest of three rounds, so that load from other jobs on the
        # machine falls on both alike.
        separate(merged, prompts[:args.eval_batch_size], args.eval_batch_size)
        seconds = {"separate": [], "shared": []}
        for _ in range(3):
            for name, fn in (("separate", separate), ("shared", shared)):
                start = time.perf_counter()
                fn(merged, prompts, args.eval_batch_size)
                seconds[name].append(time.perf_counter() - start)
        for name, values in seconds.items():
            result[f"generate_and_rank_{name}"] = len(prompts) / min(values)
    return result


# ---- driver ------------------------------------------------------------------------------------------------------


def _worker_command(args, mode: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.bench_train_step", "--_worker", mode,  # run in REPO
            *[f"--{k}={v}" for k, v in _shared_flags(args).items()]]


def _shared_flags(args) -> dict:
    return dict(model_name=args.model_name, batch_size=args.batch_size, prompt_len=args.prompt_len,
                completion_len=args.completion_len, ns=",".join(map(str, args.ns)), steps=args.steps,
                warmup=args.warmup, threads=args.threads, seed=args.seed, eval_prompts=args.eval_prompts,
                eval_batch_size=args.eval_batch_size,
                naive_eval_batch_sizes=",".join(map(str, args.naive_eval_batch_sizes)))


def _run_worker(args, mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    load_before = os.getloadavg()[0]
    proc = subprocess.run(_worker_command(args, mode), capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        # E.g. killed for memory (concat at large N with a 49k vocabulary): report it and go on with the others.
        logger.warning("mode %s failed (exit %s): %s", mode, proc.returncode,
                       (proc.stderr.strip().splitlines() or ["no output"])[-1][-300:])
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Other jobs on the machine distort timings (OpenMP threads spin-wait for a busy core): keep the evidence.
    result["load_avg_1min"] = [load_before, os.getloadavg()[0]]
    logger.info("%-14s %s", mode, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()
                                   if k not in ("step_s", "load_avg_1min")})
    return result


def format_table(results: dict) -> str:
    sft = results["sft_s"]
    lines = [
        f"SFT step (labels, all logits): {sft:.3f} s   SFT lean (completion logits only): "
        f"{results['sft_lean_s']:.3f} s",
        f"SFT step through trl's fused LM head: every position {results['sft_trl_s']:.3f} s, labelled positions "
        f"only (sft.py) {results['sft_trl_compact_s']:.3f} s ({results['sft_trl_s'] / results['sft_trl_compact_s']:.2f}x)",
        f"{'N':>3} | {'concat s':>9} {'x SFT':>6} | {'shared s':>9} {'x SFT':>6} | {'concat/shared':>13} | "
        f"{'shared+ref s':>12} {'x SFT':>6}",
    ]
    for n, shared in results["shared_s"].items():
        concat = results["concat_s"].get(n)
        shared_ref = results["shared_ref_s"].get(n)
        concat_cells = f"{concat:>9.3f} {concat / sft:>6.2f}" if concat else f"{'-':>9} {'':>6}"
        speedup = f"{concat / shared:>13.1f}" if concat else f"{'-':>13}"
        ref_cells = f"{shared_ref:>12.3f} {shared_ref / sft:>6.2f}" if shared_ref else f"{'-':>12} {'':>6}"
        lines.append(f"{n:>3} | {concat_cells} | {shared:>9.3f} {shared / sft:>6.2f} | {speedup} | {ref_cells}")
    for n, lean in results.get("concat_lean_s", {}).items():
        lines.append(f"concat with log-softmax on completion positions only, N={n}: {lean:.3f} s "
                     f"({lean / sft:.2f} x SFT, {lean / results['shared_s'][n]:.1f} x shared)")
    rss = results["peak_rss_mb"]
    shared_largest = rss[f"shared_{max(map(int, results['shared_s']))}"]
    lines.append("peak RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
                 + f"   (shared/sft {shared_largest / rss['sft']:.3f})")
    lines.append("RSS growth during steps MB: " + ", ".join(f"{k} {v:.0f}" for k, v in results["step_rss_mb"].items()))
    if results.get("eval_prompts_per_s"):
        e = results["eval_prompts_per_s"]
        lines.append(f"eval prompts/s: naive {e['naive']:.2f}, ours {e['ours']:.2f} ({e['ours'] / e['naive']:.2f}x)")
        for batch, rate in e.get("naive_by_batch", {}).items():
            lines.append(f"  naive at batch {batch}: {rate:.2f} prompts/s (ours {e['ours'] / rate:.2f}x)")
        if "generate_and_rank_shared" in e:
            separate, shared = e["generate_and_rank_separate"], e["generate_and_rank_shared"]
            lines.append(f"generation + ranking of 20 candidates, prompts/s: two passes {separate:.2f}, one shared "
                         f"prefill {shared:.2f} ({shared / separate:.2f}x)")
    if results.get("failed_modes"):
        lines.append("failed modes (see the warnings above): " + ", ".join(results["failed_modes"]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name", default="tiny", help="'tiny' (random LLaMA, vocab 8000), 'smollm2-135m', or a path")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--prompt_len", type=int, default=180, help="mean prompt length in tokens (+-20%%)")
    parser.add_argument("--completion_len", type=int, default=6, help="mean completion length in tokens, EOS included")
    parser.add_argument("--ns", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3, 7, 15],
                        help="numbers of negatives, comma-separated")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per mode (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval_prompts", type=int, default=64, help="prompts for the generation throughput (0: skip)")
    parser.add_argument("--eval_batch_size", type=int, default=16, help="batch of our evaluator (inference.py's default)")
    parser.add_argument("--naive_eval_batch_sizes", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32],
                        help="batches of the plain evaluator; the first is the reported 'naive' (32: the original "
                             "release's inference.sh)")
    parser.add_argument("--concat_ns", type=lambda s: [int(x) for x in s.split(",") if x], default=None,
                        help="numbers of negatives for the (slow) concat mode; default: --ns; '' skips it")
    parser.add_argument("--no_ref_adapter", action="store_true", help="skip the on-the-fly reference variant")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over all modes; each mode reports its fastest round (use 2-3 on a busy machine)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._worker is not None:
        args.mode = args._worker
        result = eval_prompts_per_s(args) if args.mode == "eval" else run_mode(args)
        print(json.dumps(result))
        return

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    concat_ns = args.ns if args.concat_ns is None else args.concat_ns
    modes = (["sft", "sft_lean", "sft_trl", "sft_trl_compact"] + [f"shared_{n}" for n in args.ns] + [f"concat_{n}" for n in concat_ns]
             + [f"concat_lean_{n}" for n in concat_ns if n == max(concat_ns)]
             + ([] if args.no_ref_adapter else [f"shared_ref_{n}" for n in args.ns])
             + (["eval"] if args.eval_prompts else []))
    # Round-robin over the modes, then keep each mode's fastest round: other jobs on the machine only ever add time.
    rounds = {mode: [] for mode in modes}
    for round_index in range(args.repeats):
        logger.info("round %d/%d", round_index + 1, args.repeats)
        for mode in modes:
            result = _run_worker(args, mode)
            if result is not None:
                rounds[mode].append(result)
    failed = sorted(mode for mode, runs in rounds.items() if not runs)
    rounds = {mode: runs for mode, runs in rounds.items() if runs}
    for required in ("sft", "sft_lean", "sft_trl", "sft_trl_compact"):
        if required not in rounds:
            raise SystemExit(f"error: mode {required} failed; see the warnings above")
    concat_ns = [n for n in concat_ns if f"concat_{n}" in rounds]
    ns = [n for n in args.ns if f"shared_{n}" in rounds]
    raw = {mode: min(runs, key=lambda r: r["median_s"]) for mode, runs in rounds.items() if mode != "eval"}
    for mode, runs in rounds.items():
        if mode != "eval":  # memory does not depend on the machine's load: report the largest seen
            raw[mode] = {**raw[mode], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                         "step_rss_mb": max(r["step_rss_mb"] for r in runs)}
    eval_result = (
        {**{key: max(r[key] for r in rounds["eval"]) for key in rounds["eval"][0] if key != "naive_by_batch"
            and isinstance(rounds["eval"][0][key], float)},
         "naive_by_batch": {b: max(r["naive_by_batch"][b] for r in rounds["eval"])
                            for b in rounds["eval"][0]["naive_by_batch"]}}
        if "eval" in rounds else None
    )
    largest = max(ns)
    memory_modes = [m for m in ("sft", f"concat_{largest}", f"shared_{largest}") if m in raw]
    results = {
        "sft_s": raw["sft"]["median_s"],
        "sft_lean_s": raw["sft_lean"]["median_s"],
        "sft_trl_s": raw["sft_trl"]["median_s"],
        "sft_trl_compact_s": raw["sft_trl_compact"]["median_s"],
        "concat_s": {str(n): raw[f"concat_{n}"]["median_s"] for n in concat_ns},
        "concat_lean_s": {m.rpartition("_")[2]: r["median_s"] for m, r in raw.items() if m.startswith("concat_lean")},
        "shared_s": {str(n): raw[f"shared_{n}"]["median_s"] for n in ns},
        "shared_ref_s": {str(n): raw[f"shared_ref_{n}"]["median_s"] for n in ns if f"shared_ref_{n}" in raw},
        "peak_rss_mb": {m: raw[m]["peak_rss_mb"] for m in memory_modes},
        "step_rss_mb": {m: raw[m]["step_rss_mb"] for m in memory_modes},
        "eval_prompts_per_s": eval_result,
        "config": {**_shared_flags(args), "ns": args.ns, "repeats": args.repeats, "torch_threads": args.threads,
                   "lora": {"r": 8, "alpha": 32, "targets": LORA_TARGETS}, "dtype": "float32", "device": "cpu",
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_at_end": os.getloadavg()},
        "cpu_s": {mode: r["median_cpu_s"] for mode, r in raw.items()},
        "load_avg_1min_per_round": {mode: [r["load_avg_1min"] for r in runs] for mode, runs in rounds.items()},
        "step_s_all": {mode: r["step_s"] for mode, r in raw.items()},  # of the round reported
        "failed_modes": failed,
    }
    table = format_table(results)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        logger.info("wrote %s", args.json)


if __name__ == "__main__":
    main()
