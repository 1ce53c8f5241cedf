#!/usr/bin/env bash
# Set-up (as quickstart.sh), then the whole test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
python -m pytest -q --durations=15 tests "$@"
