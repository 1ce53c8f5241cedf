"""Stage 2: S-DPO preference alignment from the SFT model, with N negatives per prompt.

    python softmax_dpo.py --model_name tiny --dataset synthetic \\
        --resume_from_checkpoint outputs/sft/final_checkpoint --neg_num 3 --output_dir outputs/sdpo
    torchrun --nproc_per_node 4 softmax_dpo.py --model_name meta-llama/Llama-2-7b-hf --dataset lastfm \\
        --resume_from_checkpoint outputs/sft/final_checkpoint --batch_size 4 \\
        --effective_batch_size 128 --learning_rate 1e-5 --num_train_epochs 3 --output_dir outputs/sdpo

The policy starts from the SFT model. From an SFT adapter (LoRA, the paper's path) the reference is
the same adapter, frozen, loaded a second time on the same base weights (or, with
`--precompute_ref_log_probs`, its log-probs are computed once before training and the second adapter
is dropped). From a whole SFT model (`sft.py --full_finetune`) the reference log-probs are always
precomputed, and the policy trains all weights (`--full_finetune`) or a fresh LoRA on top. Each prompt is
encoded once and its 1 + N completions are scored on top of it (`--forward shared`); the
straightforward 1 + N full copies remain available as `--forward concat`.

`--resume_from_checkpoint` names the SFT model (as in the original release). A killed preference run
continues with `--resume_training` (True: the latest `checkpoint-*` in `output_dir`; or a checkpoint
folder): optimizer, scheduler, RNG states and the data order are restored from it, and the reference
stays the SFT model (its adapter is loaded again from `--resume_from_checkpoint`, or its log-probs are
precomputed again from the SFT model before the policy's weights are restored).
"""

from __future__ import annotations

import logging
import time

import data_interface as di
import models
import runtime

logger = logging.getLogger("sdpo.softmax_dpo")
REFERENCE_ADAPTER = "reference"


def train(
    model_name: str = "tiny",
    resume_from_checkpoint: str | None = None,
    resume_training: bool | str = False,
    dataset: str = "synthetic",
    train_file: str | None = None,
    val_file: str | None = None,
    prompt_path: str | None = None,
    output_dir: str = "outputs/sdpo",
    overwrite_output_dir: bool = False,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    effective_batch_size: int | None = None,
    learning_rate: float = 1e-4,
    num_train_epochs: float = 1.0,
    max_steps: int = -1,
    cutoff_len: int = 512,
    eval_step: int | float = 50,
    beta: float = 1.0,
    neg_num: int = 3,
    forward: str = "shared",
    precompute_ref_log_probs: bool = False,
    full_finetune: bool = False,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = 200,
    bf16: bool | None = None,
    load_in_4bit: bool | str = "auto",
    bnb_4bit_use_double_quant: bool = False,
    logging_dir: str | None = None,
    wandb_project: str = "",
    wandb_name: str = "",
    seed: int = 0,
) -> str:
    """Align the SFT model (adapter or whole model) with the softmax-DPO loss; returns the final checkpoint path."""
    flags, start = dict(locals()), time.time()
    if not resume_from_checkpoint:
        raise runtime.UsageError("--resume_from_checkpoint must name the SFT model (e.g. outputs/sft/final_checkpoint)")
    runtime.check_checkpoint(resume_from_checkpoint)
    if forward not in ("shared", "concat"):
        raise runtime.UsageError(f"--forward must be 'shared' or 'concat', got {forward!r}")
    runtime.check_load_in_4bit(load_in_4bit)
    eval_step = runtime.check_eval_step(eval_step)
    gradient_accumulation_steps = runtime.accumulation_steps(gradient_accumulation_steps, effective_batch_size,
                                                             batch_size)
    full_sft = runtime.is_full_model(resume_from_checkpoint)
    if full_finetune and not full_sft:
        raise runtime.UsageError(f"{resume_from_checkpoint}: --full_finetune needs a whole-model SFT checkpoint "
                                 "(sft.py --full_finetune), not a LoRA adapter")
    output = runtime.check_output_dir(output_dir, overwrite_output_dir, runtime.FINAL_CHECKPOINT)
    checkpoint_to_continue = runtime.checkpoint_to_continue(output, resume_training)
    data = runtime.load_stage_data(("train", "val"), dataset, train_file, val_file, None, prompt_path)
    di.check_neg_num(data.train, neg_num, data.files.train)
    di.check_neg_num(data.val, neg_num, data.files.val)
    train_records = runtime.records_for_steps(data.train[:max_train_samples] if max_train_samples else data.train,
                                              max_steps, batch_size, gradient_accumulation_steps, seed)
    val_records = di.sample_records(data.val, max_eval_samples, seed)  # seeded random, as the original

    from datasets import Dataset
    from transformers import set_seed

    from trainer import SoftmaxDPOConfig, SoftmaxDPOTrainer

    set_seed(seed)
    base = runtime.base_model_path(model_name, resume_from_checkpoint, data, seed)
    tokenizer = models.load_tokenizer(runtime.tokenizer_path(base, resume_from_checkpoint))
    if full_sft:
        # The SFT model is a whole model: the policy trains all of it (--full_finetune) or a fresh LoRA on
        # it, and the reference is that SFT model, whose log-probs are computed once before training.
        model = models.load_base_model(base, load_in_4bit=False if full_finetune else load_in_4bit,
                                       double_quant=bnb_4bit_use_double_quant, full_precision=full_finetune)
        if not full_finetune:
            model = models.attach_lora(model, models.lora_config(model_name))
        precompute_ref_log_probs = True
    else:
        model = models.load_base_model(base, load_in_4bit=load_in_4bit, double_quant=bnb_4bit_use_double_quant)
        model = models.load_adapter(model, resume_from_checkpoint, trainable=True)
        if not precompute_ref_log_probs:
            model.load_adapter(resume_from_checkpoint, adapter_name=REFERENCE_ADAPTER, is_trainable=False)

    def tokenized(records):
        rows = di.build_preference_rows(records, data.templates, neg_num, seed)
        return Dataset.from_list([di.tokenize_preference_row(tokenizer, row, cutoff_len) for row in rows])

    config = SoftmaxDPOConfig(
        beta=beta,
        forward=forward,
        precompute_ref_log_probs=precompute_ref_log_probs,
        reference_adapter_name=REFERENCE_ADAPTER,
        **runtime.stage_training_arguments(output, batch_size, gradient_accumulation_steps, learning_rate,
                                           num_train_epochs, max_steps, eval_step, seed, wandb_project,
                                           wandb_name, logging_dir, bf16),
    )
    train_dataset = tokenized(train_records)
    trainer = SoftmaxDPOTrainer(
        model=model, args=config, train_dataset=train_dataset, eval_dataset=tokenized(val_records),
        processing_class=tokenizer,
    )
    trainer.register_records(train_dataset["prompt_input_ids"], runtime.record_numbers(data.train, train_records),
                             data.files.train)
    runtime.prepare_trainer_for_device(trainer)
    trainer.train(resume_from_checkpoint=str(checkpoint_to_continue) if checkpoint_to_continue else None)
    final = runtime.save_final_checkpoint(trainer, tokenizer, output)
    logger.info("saved the preference-aligned adapter and tokenizer to %s", final)
    if trainer.args.should_save:
        runtime.save_json(output / "log_history.json", {"log_history": trainer.state.log_history})
    runtime.save_run_info(output, flags, time.time() - start)
    return str(final)


if __name__ == "__main__":
    runtime.main(train)
