"""``python -m rome_bench …`` (and ``torchrun -m rome_bench train …``): the ``rome-bench`` command."""

from rome_bench.cli import main

main()
