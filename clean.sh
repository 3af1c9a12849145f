#!/usr/bin/env bash
# The main job: on first use create .venv and install requirements.txt, then run `python -m curation.clean`.
# All arguments go to curation.clean; try `./clean.sh --help`.
set -euo pipefail
. "$(dirname "$0")/tools/venv.sh" requirements.txt
exec "$PY" -m curation.clean "$@"
