#!/usr/bin/env bash
# The test suite: on first use create .venv and install requirements-test.txt (and Debian's Chromium for the
# browser test when apt-get is available), then run pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
. tools/venv.sh requirements-test.txt
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's chromium + chromium-driver for the browser test ..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "could not install chromium: the browser test will skip and say why" >&2
fi
exec "$PY" -m pytest "$@"
