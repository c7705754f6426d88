"""python -m rome_bench: the rome-bench command (also under torchrun)."""

from rome_bench.cli import main

if __name__ == "__main__":
    main()
