#!/usr/bin/env bash
# The whole method in one command on a CPU: set-up, data, SFT -> DPO -> S-DPO -> inference, results table.
#   bash quickstart.sh                      # real LastFM (prepared on first use), SmolLM2-135M
#   DATASET=synthetic bash quickstart.sh    # offline synthetic data, no raw archive needed
# Stage hyperparameters are the defaults at the top of sft.sh, dpo.sh, softmax_dpo.sh and inference.sh.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
export DATASET=${DATASET:-lastfm}
export OUTPUT_ROOT=${OUTPUT_ROOT:-outputs/quickstart}
export MAX_SAMPLES=${MAX_SAMPLES:-64}    # test prompts evaluated per method (about 5 minutes on 2 cores once set up)
start=$(date +%s)

source common.sh
ensure_dataset "$DATASET"

bash sft.sh --overwrite_output_dir
bash dpo.sh --overwrite_output_dir
bash softmax_dpo.sh --overwrite_output_dir
bash inference.sh --overwrite_output_dir
python results.py --output_root "$OUTPUT_ROOT" --dataset "$DATASET" --max_samples "$MAX_SAMPLES" --seed "${SEED:-0}"
echo "quick start finished in $(( $(date +%s) - start )) s"
