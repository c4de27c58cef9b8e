"""train.py's main() with test instrumentation, for tests/test_horovod.py.

    python tests/horovod_worker.py --out DIR [--centre_noise] [--union_of N]
        [--nonchief_logdir DIR] -- <train.py flags>

Run alone, or once per rank under `horovodrun`. Nothing here changes what
train.py computes except the two options that make a 1-rank run comparable
with an N-rank one:

--out DIR           after main() returns, write DIR/rank<R>.npz: every
                    global variable (weights, Polyak averages, optimizer
                    slots, run state; key "var/<name>") and `steps`, the per-step
                    [loss, bits_x, bits_y, pred_loss] that train_step
                    returned on this rank (the mean over all ranks).
--centre_noise      dequantisation noise replaced by its mean, half a bin.
                    The noise is the one random draw inside the training
                    graph, seeded per rank (Backend.rank_seed): a 1-rank run
                    cannot draw the numbers that N ranks drew, so without
                    this the trajectories differ by more than float rounding.
--union_of N        (1 rank) each training batch is the concatenation of the
                    batches that ranks 0..N-1 of an N-rank run get at that
                    step from data_loaders: the same examples as the N-rank
                    step, so the mean loss and gradient are the same numbers.
--nonchief_logdir   ranks > 0 get this --logdir instead of the one given, so
                    a test can check that they wrote nothing there.
--op_error R:N      rank R's N-th training step raises an op error (what
                    session.run raises when an op rejects its input), the
                    other ranks' steps run.
--signal_at R:N     rank R sends itself SIGTERM just before its N-th training
                    step (what a scheduler's stop looks like to one rank).
--stall_at R:N      rank R stops itself with SIGSTOP just before its N-th
                    training step (a hung filesystem or device looks the
                    same to the other ranks).
--kill_at R:N       rank R kills itself with SIGKILL there (a crash, the
                    out-of-memory killer).
--nudge_weights     after the restore, every model weight moves by one float32
                    ulp, up or down at random (a fixed draw): a start that
                    differs from the checkpoint's by the size of one rounding,
                    whose trajectory measures how this machine's arithmetic
                    amplifies such a difference over the steps.
"""
import argparse
import copy
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import data_loaders.data  # noqa: E402
import evaluator  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402
import trainer  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--centre_noise", action="store_true")
    p.add_argument("--union_of", type=int, default=0)
    p.add_argument("--nonchief_logdir", default="")
    p.add_argument("--op_error", default="", metavar="R:N")
    p.add_argument("--nudge_weights", action="store_true")
    p.add_argument("--signal_at", default="", metavar="R:N")
    p.add_argument("--stall_at", default="", metavar="R:N")
    p.add_argument("--kill_at", default="", metavar="R:N")
    if "--" not in argv:
        p.error("give train.py's flags after --")
    split = argv.index("--")
    return p.parse_args(argv[:split]), argv[split + 1:]


def with_logdir(flags, logdir):
    if "--logdir" not in flags:
        raise ValueError("--nonchief_logdir needs --logdir in train.py's flags")
    flags = list(flags)
    flags[flags.index("--logdir") + 1] = logdir
    return flags


def instrument(opts):
    """Patch the classes; returns the dict that collects the trainer and steps."""
    seen = {"trainer": None, "steps": []}
    init, step, restore = trainer.Trainer.__init__, trainer.Trainer.train_step, trainer.Trainer.restore

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen["trainer"] = self

    failing = tuple(int(part) for part in opts.op_error.split(":")) if opts.op_error else None
    signalled = tuple(int(part) for part in opts.signal_at.split(":")) if opts.signal_at else None
    faults = dict((tuple(int(part) for part in where.split(":")), sig) for where, sig in (
        (opts.stall_at, signal.SIGSTOP), (opts.kill_at, signal.SIGKILL)) if where)
    calls = [0]

    def recording_step(self, *args, **kwargs):
        calls[0] += 1
        if signalled == (self.backend.rank(), calls[0]):
            os.kill(os.getpid(), signal.SIGTERM)
        if (self.backend.rank(), calls[0]) in faults:
            os.kill(os.getpid(), faults[(self.backend.rank(), calls[0])])
        if failing == (self.backend.rank(), calls[0]):
            raise tf.errors.InvalidArgumentError(None, None, "Input is not invertible.")
        applied, stats = step(self, *args, **kwargs)
        assert applied, "step %d was skipped (non-finite)" % (len(seen["steps"]) + 1)
        seen["steps"].append([stats[k] for k in evaluator.STATS])  # a row of loss, bits_x, bits_y, pred_loss
        return applied, stats

    def nudging_restore(self, *args, **kwargs):
        out = restore(self, *args, **kwargs)
        nudge_weights(self)
        return out

    trainer.Trainer.__init__ = recording_init
    trainer.Trainer.train_step = recording_step
    if opts.nudge_weights:
        trainer.Trainer.restore = nudging_restore
    if opts.centre_noise:
        model.Glow.dequantize = lambda self, x: x + 0.5 / self.n_bins
    if opts.union_of:
        union_batches(opts.union_of)
    return seen


def nudge_weights(tr):
    """Each model weight one ulp up or down (random signs, seed 0), through the variables' own initialisers (the
    graph is final): `load` feeds the initial value."""
    rng = np.random.RandomState(0)
    for v in tr.graph.get_collection("trainable_variables"):
        value = tr.sess.run(v)
        towards = np.where(rng.rand(*value.shape) < 0.5, -np.inf, np.inf).astype(value.dtype)
        v.load(np.nextafter(value, towards), tr.sess)


def union_batches(n_ranks):
    real = data_loaders.data.Data.train_stream

    def train_stream(self, batch_size, first, count):
        assert self.size == 1 and batch_size % n_ranks == 0, (self.size, batch_size, n_ranks)
        shards = []
        for r in range(n_ranks):
            view = copy.copy(self)
            view.rank, view.size = r, n_ranks
            shards.append(real(view, batch_size // n_ranks, first, count))
        try:
            for parts in zip(*shards):
                yield (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
        finally:
            for shard in shards:
                shard.close()

    data_loaders.data.Data.train_stream = train_stream


def main(argv):
    opts, flags = parse(argv)
    rank = int(os.environ.get("HOROVOD_RANK", "0"))
    if opts.nonchief_logdir and rank > 0:
        flags = with_logdir(flags, opts.nonchief_logdir)
    seen = instrument(opts)
    status = train.cli(flags)  # as train.py runs: an error is one line on stderr, and a status
    tr = seen["trainer"]
    assert tr.backend.rank() == rank, (tr.backend.rank(), rank)
    variables = tr.graph.get_collection("variables")
    values = tr.sess.run(variables)
    arrays = dict(("var/" + v.op.name, a) for v, a in zip(variables, values))
    arrays["steps"] = np.array(seen["steps"], np.float64)
    arrays["size"] = np.array(tr.backend.size())
    os.makedirs(opts.out, exist_ok=True)
    np.savez(os.path.join(opts.out, "rank%d.npz" % rank), **arrays)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
