"""Stage 1: supervised fine-tuning with LoRA, loss on the completion (the item name + EOS) only.

    python sft.py --model_name tiny --dataset synthetic --output_dir outputs/sft          # CPU
    torchrun --nproc_per_node 4 sft.py --model_name meta-llama/Llama-2-7b-hf --dataset lastfm \\
        --batch_size 4 --effective_batch_size 128 --num_train_epochs 5 --output_dir outputs/sft

Writes checkpoints every `eval_step` steps (or that fraction of the run, e.g. 0.2), keeps the best by
eval loss, and saves the final adapter (with `--full_finetune`: the whole model, e.g. for the tiny model
trained from scratch) and tokenizer in `output_dir/final_checkpoint`. `--resume_from_checkpoint` (a checkpoint
folder, or True for the latest in output_dir) continues a killed run. With `--full_finetune`,
`--tie_word_embeddings True` shares the input and output embeddings and `--item_embeddings sasrec` starts
each item token's embedding from a SASRec trained on the training split (`item_init.py`; for tiny-bpe, each
piece of a name from the mean vector of the names it occurs in).
`--train_on_inputs True` adds a language-modelling loss on the prompt's tokens to the completion's (off by default,
as in the paper): for a model trained from scratch (tiny-bpe) it stands in for the pretraining that taught a real
LLM the item names. Its eval loss, which picks the best checkpoint, then covers the prompt too.
"""

from __future__ import annotations

import logging
import time

import data_interface as di
import models
import runtime

logger = logging.getLogger("sdpo.sft")


def train(
    model_name: str = "tiny",
    dataset: str = "synthetic",
    train_file: str | None = None,
    val_file: str | None = None,
    prompt_path: str | None = None,
    output_dir: str = "outputs/sft",
    overwrite_output_dir: bool = False,
    resume_from_checkpoint: str | bool | None = None,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    effective_batch_size: int | None = None,
    learning_rate: float = 1e-3,
    num_train_epochs: float = 1.0,
    max_steps: int = -1,
    cutoff_len: int = 512,
    eval_step: int | float = 50,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = 200,
    lora_r: int = 8,
    lora_alpha: int = 32,
    lora_dropout: float = 0.1,
    full_finetune: bool = False,
    item_embeddings: str = "random",
    tie_word_embeddings: bool = False,
    train_on_inputs: bool = False,
    bf16: bool | None = None,
    load_in_4bit: bool | str = "auto",
    bnb_4bit_use_double_quant: bool = False,
    logging_dir: str | None = None,
    wandb_project: str = "",
    wandb_name: str = "",
    seed: int = 0,
) -> str:
    """Fine-tune `model_name` on the SFT rows of the train split; returns the final checkpoint path."""
    flags, start = dict(locals()), time.time()
    runtime.check_load_in_4bit(load_in_4bit)
    if item_embeddings not in ("random", "sasrec"):
        raise runtime.UsageError(f"--item_embeddings must be random or sasrec, got {item_embeddings!r}")
    if (item_embeddings != "random" or tie_word_embeddings) and not full_finetune:
        raise runtime.UsageError("--item_embeddings sasrec and --tie_word_embeddings need --full_finetune True")
    eval_step = runtime.check_eval_step(eval_step)
    gradient_accumulation_steps = runtime.accumulation_steps(gradient_accumulation_steps, effective_batch_size,
                                                             batch_size)
    output = runtime.check_output_dir(output_dir, overwrite_output_dir, runtime.FINAL_CHECKPOINT)
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint not in ("True", "False"):
        runtime.check_checkpoint(resume_from_checkpoint)
    checkpoint_to_continue = runtime.checkpoint_to_continue(output, resume_from_checkpoint or False)
    data = runtime.load_stage_data(("train", "val"), dataset, train_file, val_file, None, prompt_path)
    train_records = runtime.records_for_steps(data.train[:max_train_samples] if max_train_samples else data.train,
                                              max_steps, batch_size, gradient_accumulation_steps, seed)
    val_records = di.sample_records(data.val, max_eval_samples, seed)  # seeded random, as the original

    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(seed)
    base = runtime.base_model_path(model_name, None, data, seed)
    tokenizer = models.load_tokenizer(base)
    if full_finetune:  # every weight trains: for models trained from scratch (tiny), never quantized
        model = models.load_base_model(base, load_in_4bit=False, full_precision=True)
        if tie_word_embeddings:  # the output layer scores items against the input item embeddings, as SASRec
            models.tie_word_embeddings(model)
        if item_embeddings == "sasrec":
            import item_init

            item_init.init_item_embeddings(model, tokenizer, data.train, seed)
    else:
        model = models.load_base_model(base, load_in_4bit=load_in_4bit, double_quant=bnb_4bit_use_double_quant)
        model = models.attach_lora(model, models.lora_config(model_name, lora_r, lora_alpha, lora_dropout))

    def tokenized(records):
        rows = di.build_sft_rows(records, data.templates, seed)
        return Dataset.from_list([di.tokenize_sft_row(tokenizer, row, cutoff_len, train_on_inputs) for row in rows])

    config = SFTConfig(
        max_length=None,  # prompts are already cut from the left by `encode_prompt`
        **runtime.stage_training_arguments(output, batch_size, gradient_accumulation_steps, learning_rate,
                                           num_train_epochs, max_steps, eval_step, seed, wandb_project,
                                           wandb_name, logging_dir, bf16),
    )
    from trainer import AtomicCheckpoints, StopOnNonFinite
    from trainer.compact_lm_head import compact_lm_head_on_cpu

    compact_lm_head_on_cpu()  # on a CPU, the LM head projects the completion's positions only (same loss)

    class SFTStageTrainer(AtomicCheckpoints, StopOnNonFinite, SFTTrainer):
        """trl's SFTTrainer with whole-or-absent checkpoints, stopping at the first non-finite loss or gradient."""

    train_dataset = tokenized(train_records)
    trainer = SFTStageTrainer(
        model=model, args=config, train_dataset=train_dataset, eval_dataset=tokenized(val_records),
        processing_class=tokenizer,
    )
    trainer.register_records(train_dataset["input_ids"], runtime.record_numbers(data.train, train_records),
                             data.files.train)
    runtime.prepare_trainer_for_device(trainer)
    trainer.train(resume_from_checkpoint=str(checkpoint_to_continue) if checkpoint_to_continue else None)
    final = runtime.save_final_checkpoint(trainer, tokenizer, output)
    logger.info("saved the SFT adapter and tokenizer to %s", final)
    if trainer.args.should_save:
        runtime.save_json(output / "log_history.json", {"log_history": trainer.state.log_history})
    runtime.save_run_info(output, flags, time.time() - start)
    return str(final)


if __name__ == "__main__":
    runtime.main(train)
