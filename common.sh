# Sourced by the stage launchers: picks the Python and the launcher (python or torchrun).
# Not meant to be edited: the hyperparameters live at the top of each stage's .sh file.
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# NPROC: processes (one per GPU); empty = one per visible GPU (CUDA_VISIBLE_DEVICES counts), 1 without CUDA.
# SDPO_DEVICE: auto (CUDA when torch can use it) | cuda | cpu (ask for the CPU, e.g. 2 gloo processes on a CPU).
export SDPO_DEVICE=${SDPO_DEVICE:-auto}
if [ -z "${NPROC:-}" ]; then
    if compgen -G "/dev/nvidia[0-9]*" > /dev/null; then  # torch counts the GPUs it can use (CUDA_VISIBLE_DEVICES)
        NPROC=$("$PYTHON" -c 'import hardware; print(hardware.default_process_count())')
    else
        NPROC=1
    fi
fi
if [ "$NPROC" -gt 1 ]; then
    LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")  # one machine, free port
else
    LAUNCH=("$PYTHON")
fi

# ensure_dataset NAME: prepare data/NAME on first use (synthetic and folders need nothing). NAME-original (e.g.
# lastfm-original) is the same dataset with the original code's candidates (`--candidates original`). A raw archive
# beside the checkout (../shared/data/raw/<name>) is used when there is one; otherwise data.prepare reads
# $SDPO_RAW_DIR or downloads the official archive.
ensure_dataset() {
    local name=$1
    if [ "$name" = synthetic ] || [ -d "$name" ] || [ -f "data/$name/train.json" ]; then return 0; fi
    local base=${name%-original} flags=()
    if [ "$base" != "$name" ]; then flags=(--candidates original); fi
    declare -A raw_name=([lastfm]=lastfm-2k [movielens]=ml-100k [goodreads]=goodreads)
    local local_raw="../shared/data/raw/${raw_name[$base]:-$base}"
    if [ -z "${SDPO_RAW_DIR:-}" ] && [ -d "$local_raw" ]; then
        "$PYTHON" -m data.prepare --dataset "$base" ${flags[@]+"${flags[@]}"} --raw_dir "$local_raw"
    else
        "$PYTHON" -m data.prepare --dataset "$base" ${flags[@]+"${flags[@]}"}
    fi
}
