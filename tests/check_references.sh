#!/usr/bin/env bash
# The CIFAR-10 reference check (tox runs it last; 42 s on 2 cores): needs the data, ROME_BENCH_DATA. The synthetic
# reference is checked by tests/test_check_mutations.py, which also breaks each attack in turn to show check fails.
set -euo pipefail
if [ -n "${ROME_BENCH_DATA:-}" ]; then
    rome-bench check --reference cifar10-cpu --no-progress
else
    echo "skipped: rome-bench check --reference cifar10-cpu (ROME_BENCH_DATA not set)"
fi
