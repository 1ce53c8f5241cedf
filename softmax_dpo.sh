#!/usr/bin/env bash
# Stage 2: S-DPO from the SFT model (a LoRA adapter, or a whole model from FULL_FINETUNE=True bash sft.sh).
# Edit the values below (or set them in the environment); extra flags pass through:
#   bash softmax_dpo.sh --forward concat
set -euo pipefail
# ---------------------------------------------------------------- small CPU run  | paper (4 GPUs)
MODEL_NAME=${MODEL_NAME:-smollm2-135m}             # meta-llama/Llama-2-7b-hf (tiny: the quick start and the cpu profile; tiny-bpe: multi-token names)
DATASET=${DATASET:-lastfm}                         # lastfm | movielens | goodreads (NAME-original: the original candidates) | synthetic
PROMPT_PATH=${PROMPT_PATH:-}                       # empty: prompts/<domain>.txt
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs/quickstart}
SFT_CHECKPOINT=${SFT_CHECKPOINT:-$OUTPUT_ROOT/sft/final_checkpoint}
NPROC=${NPROC:-}                                   # empty: one process per visible GPU, 1 without CUDA
BATCH_SIZE=${BATCH_SIZE:-4}                        # 4
GRADIENT_ACCUMULATION_STEPS=${GRADIENT_ACCUMULATION_STEPS:-1}  # 8
EFFECTIVE_BATCH_SIZE=${EFFECTIVE_BATCH_SIZE:-}      # 128: sets the accumulation for any NPROC (batch x accumulation x NPROC)
LEARNING_RATE=${LEARNING_RATE:-3e-4}               # 1e-5
NUM_TRAIN_EPOCHS=${NUM_TRAIN_EPOCHS:-1}            # 3
MAX_STEPS=${MAX_STEPS:-6}                          # -1 (use epochs)
CUTOFF_LEN=${CUTOFF_LEN:-512}                      # 512
EVAL_STEP=${EVAL_STEP:-6}                          # 0.1 (a fraction of the run's steps, as the original)
BETA=${BETA:-1.0}                                  # 1.0
NEG_NUM=${NEG_NUM:-3}                              # 3
FORWARD=${FORWARD:-shared}                         # shared (prompt encoded once) | concat (1+N copies)
MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES:-}           # empty: all
MAX_EVAL_SAMPLES=${MAX_EVAL_SAMPLES:-16}           # 2000 (seeded random sample of the val split)
FULL_FINETUNE=${FULL_FINETUNE:-False}              # False (LoRA, or a fresh LoRA on a whole SFT model); True trains the
                                                   # whole SFT model (needs one from FULL_FINETUNE=True bash sft.sh)
LOAD_IN_4BIT=${LOAD_IN_4BIT:-auto}                 # auto (4-bit NF4 on CUDA, fp32 on a CPU) | True (4-bit on a CPU too) | False
BNB_4BIT_USE_DOUBLE_QUANT=${BNB_4BIT_USE_DOUBLE_QUANT:-False}  # False (as the original)
SEED=${SEED:-0}
RESUME_TRAINING=${RESUME_TRAINING:-False}          # True: continue a killed run from the latest checkpoint in its output dir
WANDB_PROJECT=${WANDB_PROJECT:-}
WANDB_NAME=${WANDB_NAME:-sdpo}
# -------------------------------------------------------------------------------------------------
source "$(dirname "$0")/common.sh"
"${LAUNCH[@]}" softmax_dpo.py \
    --model_name "$MODEL_NAME" --dataset "$DATASET" ${PROMPT_PATH:+--prompt_path "$PROMPT_PATH"} \
    --resume_from_checkpoint "$SFT_CHECKPOINT" \
    --output_dir "$OUTPUT_ROOT/sdpo" --logging_dir "$OUTPUT_ROOT/logs/sdpo" \
    --batch_size "$BATCH_SIZE" --gradient_accumulation_steps "$GRADIENT_ACCUMULATION_STEPS" \
    ${EFFECTIVE_BATCH_SIZE:+--effective_batch_size "$EFFECTIVE_BATCH_SIZE"} \
    --learning_rate "$LEARNING_RATE" --num_train_epochs "$NUM_TRAIN_EPOCHS" --max_steps "$MAX_STEPS" \
    --cutoff_len "$CUTOFF_LEN" --eval_step "$EVAL_STEP" --beta "$BETA" --neg_num "$NEG_NUM" \
    --forward "$FORWARD" ${MAX_TRAIN_SAMPLES:+--max_train_samples "$MAX_TRAIN_SAMPLES"} \
    --max_eval_samples "$MAX_EVAL_SAMPLES" --full_finetune "$FULL_FINETUNE" \
    --load_in_4bit "$LOAD_IN_4BIT" --bnb_4bit_use_double_quant "$BNB_4BIT_USE_DOUBLE_QUANT" \
    --resume_training "$RESUME_TRAINING" --seed "$SEED" --wandb_project "$WANDB_PROJECT" --wandb_name "$WANDB_NAME" "$@"
