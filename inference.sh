#!/usr/bin/env bash
# Evaluation of each trained stage on the test split (generation: HR@1, ValidRatio; ranking: HR@K, NDCG@K, MRR;
# optionally constrained decoding). Edit the values below (or set them in the environment); extra flags pass
# through: bash inference.sh --max_samples 100
set -euo pipefail
# ---------------------------------------------------------------- small CPU run  | paper
MODEL_NAME=${MODEL_NAME:-smollm2-135m}             # meta-llama/Llama-2-7b-hf (tiny: the quick start and the cpu profile; tiny-bpe: multi-token names)
DATASET=${DATASET:-lastfm}                         # lastfm | movielens | goodreads (NAME-original: the original candidates) | synthetic
PROMPT_PATH=${PROMPT_PATH:-}                       # empty: prompts/<domain>.txt
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs/quickstart}
METHODS=${METHODS:-"base sft dpo sdpo"}            # stages under $OUTPUT_ROOT; base = the model untrained
NPROC=${NPROC:-}                                   # empty: one process per visible GPU (each evaluates a share)
BATCH_SIZE=${BATCH_SIZE:-16}                       # 16
MAX_SAMPLES=${MAX_SAMPLES:-64}                     # 0: the whole test split
CUTOFF_LEN=${CUTOFF_LEN:-512}
LOAD_IN_4BIT=${LOAD_IN_4BIT:-auto}                 # auto (4-bit NF4 on CUDA, fp32 on a CPU) | True (4-bit on a CPU too) | False
BNB_4BIT_USE_DOUBLE_QUANT=${BNB_4BIT_USE_DOUBLE_QUANT:-False}  # False (as the original)
SEED=${SEED:-0}
CONSTRAINED_DECODING=${CONSTRAINED_DECODING:-False}  # False | True: also decoding restricted to the candidates
# -------------------------------------------------------------------------------------------------
source "$(dirname "$0")/common.sh"
for method in $METHODS; do
    checkpoint=$([ "$method" = base ] || echo "$OUTPUT_ROOT/$method/final_checkpoint")
    "${LAUNCH[@]}" inference.py \
        --base_model "$MODEL_NAME" ${checkpoint:+--resume_from_checkpoint "$checkpoint"} \
        --dataset "$DATASET" ${PROMPT_PATH:+--prompt_path "$PROMPT_PATH"} \
        --output_dir "$OUTPUT_ROOT/eval/$method" --batch_size "$BATCH_SIZE" \
        ${MAX_SAMPLES:+--max_samples "$MAX_SAMPLES"} --cutoff_len "$CUTOFF_LEN" \
        --load_in_4bit "$LOAD_IN_4BIT" --bnb_4bit_use_double_quant "$BNB_4BIT_USE_DOUBLE_QUANT" --seed "$SEED" \
        --constrained_decoding "$CONSTRAINED_DECODING" "$@"
done
