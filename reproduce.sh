#!/usr/bin/env bash
# The paper's experiments as one resumable matrix (the matrix itself is in reproduce.py):
#   bash reproduce.sh                                   # profile cpu on LastFM (time below)
#   PROFILE=paper bash reproduce.sh                     # Llama-2-7B, 4-bit + LoRA, NPROC GPUs (default: all
#                                                       # visible; the paper used 4), torchrun
#   PROFILE=paper bash reproduce.sh --dry_run           # print the paper's commands, run nothing
#   bash reproduce.sh --report_only                     # tables and figures from the cells finished so far
# A rerun skips finished cells; a killed run loses at most the cell in progress. Results (tables, figures,
# results.json) go to results/<dataset>/<model>/; stage outputs and logs to outputs/reproduce/.
# Time of the cpu profile: not yet timed as one run; from measured cell times on shared cores the tiny plan is
# about 4 hours with --jobs 2; SmolLM2 about half an hour; tiny-bpe not measured.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
PROFILE=${PROFILE:-cpu}            # cpu | paper | smoke
DATASET=${DATASET:-lastfm}         # lastfm | movielens | goodreads | synthetic | a prepared folder
MODELS=${MODELS:-}                 # empty: every model of the profile (cpu: tiny,smollm2-135m,tiny-bpe)
DEFAULT_JOBS=1                     # cells run at once, each pinned to its share of the CPU cores: 2 for the cpu
[[ $PROFILE == cpu && $(nproc) -ge 2 ]] && DEFAULT_JOBS=2  # profile on 2+ cores; 1 where every cell uses all GPUs
JOBS=${JOBS:-$DEFAULT_JOBS}
source common.sh
ensure_dataset "$DATASET"
"$PYTHON" reproduce.py --profile "$PROFILE" --dataset "$DATASET" ${MODELS:+--models "$MODELS"} --jobs "$JOBS" "$@"
