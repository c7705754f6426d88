#!/usr/bin/env bash
# Numerics guard (tox runs it after pytest): the tests that judge a trained model's decisions (marker 'numerics') once
# more under other float kernels, so a test that passes only on this CPU's kernels fails here, not on the next machine.
set -euo pipefail
capability() { python -c "import torch; print(torch.backends.cpu.get_cpu_capability())" 2>/dev/null; }
current="$(capability)"
second=default; [ "$current" = DEFAULT ] && second=avx2
if [ "$(ATEN_CPU_CAPABILITY=$second capability)" != "$current" ]; then
    echo "numerics guard: tests marked 'numerics' again with ATEN_CPU_CAPABILITY=$second (ran on $current above)"
    ATEN_CPU_CAPABILITY=$second python -m pytest -q -n auto --dist loadgroup -m numerics
else
    echo "skipped: numerics guard (this CPU offers no kernels other than $current)"
fi
