"""Benchmarks of optimjax against optax and torch.optim.

    python -m bench.step       step time of every optimizer, as % of the memory-bandwidth floor
    python -m bench.compile    jit compile time of one step for 10, 100 and 1000 leaves
    python -m bench.matrix     Adafactor (state vs factored size) and Muon (Newton-Schulz GFLOP/s) on matrices

Each prints a table while it runs and writes JSON (and a PNG plot or a Markdown table) to `bench/results/`. See
`bench/README.md`.
"""
