#!/usr/bin/env bash
# The first command on a GPU machine (a few minutes on one GPU): environment, then the paper's path at tiny scale.
#   bash gpu_check.sh                                   # report in outputs/gpu_check/report.json
#   MODEL_NAME=/models/Llama-2-7b-hf bash gpu_check.sh  # check a local copy (the paper profile
#                                                       # loads the hub id unless you edit PROFILES)
# On a CPU every check that applies runs and the CUDA ones are marked skipped. Exit status 1 when a check failed.
set -euo pipefail
MODEL_NAME=${MODEL_NAME:-meta-llama/Llama-2-7b-hf}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/gpu_check}
source "$(dirname "$0")/common.sh"
"$PYTHON" gpu_check.py --output_dir "$OUTPUT_DIR" --model_name "$MODEL_NAME" "$@"
