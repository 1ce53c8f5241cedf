#!/usr/bin/env bash
# The paper's experiments as one resumable matrix (the matrix itself is in reproduce.py):
#   bash reproduce.sh                                   # profile cpu on LastFM (time below)
#   PROFILE=paper bash reproduce.sh                     # Llama-2-7B, 4-bit + LoRA, NPROC GPUs (default: all
#                                                       # visible; the paper used 4), torchrun
#   PROFILE=paper bash reproduce.sh --dry_run           # print the paper's commands, run nothing
#   bash reproduce.sh --report_only                     # tables and figures from the cells finished so far
#   DATASET=movielens bash reproduce.sh                 # MovieLens 100K (prepared on first use)
#   DATASET=lastfm-original bash reproduce.sh           # the original code's candidates (negatives seeded by the
#                                                       # target: they give the answer away, data/README.md)
# A rerun skips finished cells; a killed run loses at most the cell in progress. Results (tables, figures,
# results.json) go to results/<dataset>/<model>/; stage outputs and logs to outputs/reproduce/.
# Time of the cpu profile with JOBS=2 on 2 cores (measured): SmolLM2 on LastFM 29.5 min as one run; the tiny plan
# on LastFM about 3.5 hours (its cells' own times add up to 424 min of one core); on MovieLens its Table 1 with one
# preference seed per SFT model (--cells, 20 of 54 cells, README) 99.2 min as one run; every plan's time: README.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
PROFILE=${PROFILE:-cpu}            # cpu | paper | smoke
DATASET=${DATASET:-lastfm}         # lastfm | movielens | goodreads (NAME-original: original candidates) |
                                   # synthetic | a prepared folder
MODELS=${MODELS:-}                 # empty: every model of the profile (cpu: tiny,smollm2-135m,tiny-bpe,
                                   # tiny-bpe-sasrec)
DEFAULT_JOBS=1                     # cells run at once, each pinned to its share of the CPU cores: 2 for the cpu
[[ $PROFILE == cpu && $(nproc) -ge 2 ]] && DEFAULT_JOBS=2  # profile on 2+ cores; 1 where every cell uses all GPUs
JOBS=${JOBS:-$DEFAULT_JOBS}
source common.sh
ensure_dataset "$DATASET"
"$PYTHON" reproduce.py --profile "$PROFILE" --dataset "$DATASET" ${MODELS:+--models "$MODELS"} --jobs "$JOBS" "$@"
