# Sourced by clean.sh and test.sh: make sure .venv exists and holds what the given requirements file lists.
# Reinstalls only when the requirements change (a stamp keeps their hash).
# usage: . tools/venv.sh REQUIREMENTS_FILE
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_req="$_repo/$1"
_venv="$_repo/.venv"
_stamp="$_venv/.installed-$(basename "$_req")"
if [ ! -x "$_venv/bin/python" ]; then
  echo "setting up $_venv (first run only) ..." >&2
  python3 -m venv "$_venv"
  "$_venv/bin/python" -m pip install --quiet --upgrade pip >&2
fi
_hash="$(cat "$_repo"/requirements*.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_hash" ]; then
  echo "installing $(basename "$_req") into $_venv ..." >&2
  "$_venv/bin/python" -m pip install --quiet -r "$_req" >&2
  echo "$_hash" > "$_stamp"
fi
export PYTHONPATH="$_repo${PYTHONPATH:+:$PYTHONPATH}"
PY="$_venv/bin/python"
