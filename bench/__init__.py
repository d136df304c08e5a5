"""Benchmarks of optimjax against optax and torch.optim.

    python -m bench.step       step time of every optimizer, as % of the memory-bandwidth floor
    python -m bench.compile    jit compile time of one step for 10, 100 and 1000 leaves

Both print a table while they run and write JSON and a PNG plot to `bench/results/`. See `bench/README.md`.
"""
