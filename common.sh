# Sourced by the stage launchers: picks the Python and the launcher (python or torchrun).
# Not meant to be edited: the hyperparameters live at the top of each stage's .sh file.
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ "${NPROC:-1}" -gt 1 ]; then
    LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")  # one machine, free port
else
    LAUNCH=("$PYTHON")
fi
