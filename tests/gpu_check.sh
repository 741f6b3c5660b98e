#!/usr/bin/env bash
# The GPU check of issue 32 (tests/gpu_check.py says what each step does):
#   OUT=/some/folder bash tests/gpu_check.sh          on the GPU machine, under 7 minutes
#   bash tests/gpu_check.sh --dry-run                  the same steps with the CPU standing in
# Logs and summary.txt go to $OUT (default ./gpu_check_out); exit status 1 if a step failed.
# Runs from the source tree, nothing installed: python is $PYTHON, else python.
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" tests/gpu_check.py "$@"
