#!/usr/bin/env bash
# Stage 1: SFT. Edit the values below (or set them in the environment); extra flags pass through:
#   bash sft.sh --max_steps 10
set -euo pipefail
# ---------------------------------------------------------------- small CPU run  | paper (4 GPUs)
MODEL_NAME=${MODEL_NAME:-smollm2-135m}             # meta-llama/Llama-2-7b-hf (tiny: the quick start and the cpu profile; tiny-bpe: multi-token names)
DATASET=${DATASET:-lastfm}                         # lastfm | movielens | goodreads (NAME-original: the original candidates) | synthetic
PROMPT_PATH=${PROMPT_PATH:-}                       # empty: prompts/<domain>.txt
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs/quickstart}
NPROC=${NPROC:-}                                   # empty: one process per visible GPU, 1 without CUDA
BATCH_SIZE=${BATCH_SIZE:-8}                        # 4
GRADIENT_ACCUMULATION_STEPS=${GRADIENT_ACCUMULATION_STEPS:-1}  # 8  (4 x 8 x 4 GPUs = 128)
EFFECTIVE_BATCH_SIZE=${EFFECTIVE_BATCH_SIZE:-}      # 128: sets the accumulation for any NPROC (batch x accumulation x NPROC)
LEARNING_RATE=${LEARNING_RATE:-3e-4}               # 1e-5
NUM_TRAIN_EPOCHS=${NUM_TRAIN_EPOCHS:-1}            # 5
MAX_STEPS=${MAX_STEPS:-10}                         # -1 (use epochs)
CUTOFF_LEN=${CUTOFF_LEN:-512}                      # 512
EVAL_STEP=${EVAL_STEP:-10}                         # 0.2 (a fraction of the run's steps, as the original)
MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES:-}           # empty: all
MAX_EVAL_SAMPLES=${MAX_EVAL_SAMPLES:-16}           # 0 (the whole val split, as the original)
FULL_FINETUNE=${FULL_FINETUNE:-False}              # False (LoRA); True trains every weight (tiny: from scratch)
TIE_WORD_EMBEDDINGS=${TIE_WORD_EMBEDDINGS:-False}  # False; True (needs FULL_FINETUNE) shares input and output embeddings
ITEM_EMBEDDINGS=${ITEM_EMBEDDINGS:-random}         # random | sasrec (needs FULL_FINETUNE; item tokens from a SASRec, item_init.py)
TRAIN_ON_INPUTS=${TRAIN_ON_INPUTS:-False}          # False (loss on the completion only); True: the prompt's tokens too
LOAD_IN_4BIT=${LOAD_IN_4BIT:-auto}                 # auto (4-bit NF4 on CUDA, fp32 on a CPU) | True (4-bit on a CPU too) | False
BNB_4BIT_USE_DOUBLE_QUANT=${BNB_4BIT_USE_DOUBLE_QUANT:-False}  # False (as the original)
SEED=${SEED:-0}
WANDB_PROJECT=${WANDB_PROJECT:-}                   # e.g. sdpo (offline unless WANDB_MODE=online)
WANDB_NAME=${WANDB_NAME:-sft}
# -------------------------------------------------------------------------------------------------
source "$(dirname "$0")/common.sh"
"${LAUNCH[@]}" sft.py \
    --model_name "$MODEL_NAME" --dataset "$DATASET" ${PROMPT_PATH:+--prompt_path "$PROMPT_PATH"} \
    --output_dir "$OUTPUT_ROOT/sft" --logging_dir "$OUTPUT_ROOT/logs/sft" \
    --batch_size "$BATCH_SIZE" --gradient_accumulation_steps "$GRADIENT_ACCUMULATION_STEPS" \
    ${EFFECTIVE_BATCH_SIZE:+--effective_batch_size "$EFFECTIVE_BATCH_SIZE"} \
    --learning_rate "$LEARNING_RATE" --num_train_epochs "$NUM_TRAIN_EPOCHS" --max_steps "$MAX_STEPS" \
    --cutoff_len "$CUTOFF_LEN" --eval_step "$EVAL_STEP" ${MAX_TRAIN_SAMPLES:+--max_train_samples "$MAX_TRAIN_SAMPLES"} \
    --max_eval_samples "$MAX_EVAL_SAMPLES" --full_finetune "$FULL_FINETUNE" \
    --tie_word_embeddings "$TIE_WORD_EMBEDDINGS" --item_embeddings "$ITEM_EMBEDDINGS" \
    --train_on_inputs "$TRAIN_ON_INPUTS" \
    --load_in_4bit "$LOAD_IN_4BIT" --bnb_4bit_use_double_quant "$BNB_4BIT_USE_DOUBLE_QUANT" \
    --seed "$SEED" --wandb_project "$WANDB_PROJECT" --wandb_name "$WANDB_NAME" "$@"
