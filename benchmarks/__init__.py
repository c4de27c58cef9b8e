"""Speed and memory benchmarks of Glow training: the lab, apart from the product.

Run from the project root, as modules of this package:

    python -m benchmarks.bench --configs small --modes none,invertible
    python benchmarks/bench.py ...    # the same (it re-runs itself with -m)

bench          speed, memory, FLOPs and utilisation per config, mode, XLA
ab_steps       two checkouts (or two modes) stepped in turn: a step-time ratio
memory_stages  RSS at each stage of building and training the paper's model
memory_trace   TensorFlow's bytes in use per session run, and what holds them
graph_memory   what one graph op costs in RSS, apart from any model
data_rate      how fast data_loaders produces training batches

common.py holds what they share, and the only code here that uses the
product (config, trainer, model, memory_saving_gradients, runtime,
data_loaders). The product never imports this package. Figures and the
commands behind them: docs/BENCHMARKS.md.
"""
