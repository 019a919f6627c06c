#!/usr/bin/env bash
# The test set-up on a fresh machine: the project with the exact package set CI tested (constraints.txt), and
# Debian's headless Chromium for the HTML test (installed only where it is missing and we are root).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e ".[dev]"
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "tests/setup.sh: installing Debian's chromium for the HTML test ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null
fi
