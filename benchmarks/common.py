"""What the benchmarks share: named configs, measurements (RSS, variable
bytes, traced runs), output, and the one adapter to the product.

Every use of the product (the project's top-level modules and data_loaders)
is in the "Adapter" section at the end of this file and nowhere else in
benchmarks/: when the product's API changes, that section is what changes.
It imports the product inside its functions, so that a driver process
(bench's parent, ab_steps') does not load TensorFlow.
"""
import json
import os
import resource
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Named configs. small: issue 9's comparison config; cifar: the paper's
# CIFAR-10 model (openai/glow's README command: 3 levels, depth 32, width
# 512, 1x1 conv, learntop) with the affine coupling of its best result;
# tiny: for tests. batch is the training, init and test batch.
CONFIGS = {
    "small": dict(image_shape=[32, 32, 1], n_levels=3, depth=8, width=128, permutation="invconv",
                  coupling="affine", learntop=False, batch=64, loop_steps=False),
    "cifar": dict(image_shape=[32, 32, 3], n_levels=3, depth=32, width=512, permutation="invconv",
                  coupling="affine", learntop=True, batch=64, loop_steps=False),
    "tiny": dict(image_shape=[8, 8, 1], n_levels=2, depth=2, width=8, permutation="invconv",
                 coupling="affine", learntop=False, batch=4, loop_steps=False),
}
MODES = ("none", "recompute", "invertible")
# Learning rate of the measured steps: a step's work does not depend on it.
LR = 1e-4
_BOOLS = {"0": False, "1": True, "false": False, "true": True}
_WANTS = {list: "HxWxC, e.g. 32x32x3", bool: "0 or 1", int: "an integer", str: "a name"}


def parse_overrides(items):
    """{key: value} of --set KEY=VALUE items, typed as the configs' values
    (image_shape as HxWxC, booleans as 0/1). ValueError names a bad item."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in CONFIGS["small"]:
            raise ValueError("--set %s: expected KEY=VALUE with KEY one of %s"
                             % (item, ", ".join(sorted(CONFIGS["small"]))))
        kind = type(CONFIGS["small"][key])
        try:
            if kind is list:
                value = [int(v) for v in text.split("x")]
            elif kind is bool:
                value = _BOOLS[text.lower()]
            else:
                value = kind(text)
        except (KeyError, ValueError):
            raise ValueError("--set %s: %s takes %s" % (item, key, _WANTS[kind])) from None
        out[key] = value
    return out


def config_values(name, overrides=None):
    """The values of config `name`, with `overrides` ({key: value}) applied."""
    values = dict(CONFIGS[name])
    values.update(overrides or {})
    return values


def add_paper_flags(parser, mode):
    """Flags of the tools that build the paper's model (config `cifar`) at a
    depth and batch of choice; --mode defaults to `mode`."""
    parser.add_argument("--depth", type=int, default=8, help="flow steps per level (the paper's: 32)")
    parser.add_argument("--mode", default=mode, choices=MODES, help="gradient checkpointing mode")
    parser.add_argument("--batch", type=int, default=64, help="training (and init) batch size")
    parser.add_argument("--steps", type=int, default=2, help="training steps")
    parser.add_argument("--loop_steps", action="store_true", help="train.py --loop_steps: each level's steps as a loop")


def paper_values(args):
    """Config `cifar` at the --depth, --batch and --loop_steps of add_paper_flags."""
    return config_values("cifar", dict(depth=args.depth, batch=args.batch, loop_steps=args.loop_steps))


def noise_batch(image_shape, n):
    """n images of uniform uint8 noise and zero labels, fixed by seed 0 (the
    speed of a step does not depend on the pixel values): (x, y)."""
    x = np.random.RandomState(0).randint(0, 256, [n] + list(image_shape)).astype(np.uint8)
    return x, np.zeros([n], np.int32)


# ---------------------------------------------------------------------------
# Measurements and output.
# ---------------------------------------------------------------------------


def rss_mib():
    """(peak, current) resident memory of this process, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    return round(peak, 1), round(current / 2.0 ** 20, 1)


def variable_bytes(graph):
    """Bytes of all of graph's variables (weights, optimizer slots, Polyak averages)."""
    import tensorflow.compat.v1 as tf

    with graph.as_default():
        return int(sum(v.get_shape().num_elements() * v.dtype.base_dtype.size for v in tf.global_variables()))


def n_params(graph):
    import tensorflow.compat.v1 as tf

    with graph.as_default():
        return int(sum(v.get_shape().num_elements() for v in tf.trainable_variables()))


def traced_run(sess, fetches, feed=None, partition_graphs=False):
    """Run once with a full trace. Returns the tf.RunMetadata: step_stats
    (each op's times and allocator figures) and, with partition_graphs, the
    graphs that ran (the ops' types)."""
    import tensorflow.compat.v1 as tf

    options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE, output_partition_graphs=partition_graphs)
    metadata = tf.RunMetadata()
    sess.run(fetches, feed, options=options, run_metadata=metadata)
    return metadata


def git_commit(root=ROOT):
    """`git describe --always --dirty` of the checkout at root: which code
    a figure came from (None where git or the repository is missing)."""
    try:
        done = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty", "--abbrev=7"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError:  # no git executable: the commit is unknown, not an error of the benchmark
        return None
    return done.stdout.decode().strip() or None


def emit(report, out="", indent=None):
    """Print `report` as JSON (one line unless indent; keys in their order:
    stages in the order they happened) and write it to `out` too."""
    text = json.dumps(report, indent=indent)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    print(text, flush=True)


def module_command(module, *args):
    """argv that runs benchmarks.<module> with this Python; run it with
    cwd=ROOT (or a checkout's root), whose package `-m` imports."""
    return [sys.executable, "-m", "benchmarks." + module] + list(args)


def quiet_env():
    """This process's environment with TensorFlow's C++ info logs off, for workers."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


# ---------------------------------------------------------------------------
# Adapter: the only code in benchmarks/ that uses the product.
# ---------------------------------------------------------------------------


def start_tf(malloc=True):
    """TensorFlow's v1 API in graph mode with its logs quiet, after glibc
    malloc is limited as train.py limits it (runtime.tune_malloc; skipped
    with malloc=False). Returns (tf, the malloc settings made)."""
    settings = {}
    if malloc:
        import runtime

        settings = runtime.tune_malloc()
    import tensorflow.compat.v1 as tf

    tf.disable_v2_behavior()
    tf.logging.set_verbosity(tf.logging.ERROR)
    return tf, settings


def run_config(image_shape, n_levels, depth, width, permutation, coupling, learntop, batch, loop_steps,
               mode="none", xla=False):
    """The product's run config for these values (train.py's flags through
    config.derive_config): `batch` is the training, init and test batch,
    `mode` the gradient checkpointing, `xla` train.py's --xla. Opaque here:
    pass it to build_run and loss_and_gradients."""
    import config as config_lib

    flags = dict(n_levels=n_levels, depth=depth, width=width, flow_permutation=permutation, flow_coupling=coupling,
                 n_batch_train=batch, n_batch_init=batch, n_batch_test=batch, gradient_checkpointing=mode,
                 image_size=image_shape[0], logdir="/nonexistent-bench-logdir")
    argv = [word for name, value in flags.items() for word in ("--" + name, str(value))]
    argv += [flag for flag, on in (("--learntop", learntop), ("--loop_steps", loop_steps), ("--xla", xla)) if on]
    # Unlabelled (n_y 1), CIFAR-10's split sizes: neither changes the graph's ops.
    return config_lib.derive_config(config_lib.parse_args(argv), list(image_shape), 1, 50000, 10000, 1)


def build_run(cfg, xla=False, grappler=True):
    """The training graph and session of run config cfg on the CPU, as
    train.py builds them (trainer.Trainer: optimizer, Polyak average, finite
    checks, evaluation and sampling graphs; a session of runtime.make_session,
    which turns on CPU auto-clustering for xla). grappler=False: a session
    without Grappler's graph rewrites (not with xla)."""
    import runtime
    import tensorflow.compat.v1 as tf
    import trainer

    if xla and not grappler:
        raise ValueError("build_run(xla=True, grappler=False): grappler=False is for runs without XLA")
    backend = runtime.make_backend("none", "cpu")

    def session(graph):
        if grappler:
            return runtime.make_session("cpu", backend, graph=graph, xla=xla)
        config = runtime.session_config("cpu")
        config.graph_options.rewrite_options.disable_meta_optimizer = True
        return tf.Session(graph=graph, config=config)

    return Run(trainer.Trainer(cfg, backend, session))


class Run(object):
    """A built trainer.Trainer, through what the benchmarks do with it."""

    def __init__(self, trainer):
        self._trainer = trainer
        self.graph = trainer.graph
        self.sess = trainer.sess

    def initialize(self, x, y):
        """Fresh weights: initialisers, data-dependent init on (x, y), Polyak seed."""
        self._trainer.initialize(x, y)

    def restore(self, path):
        """Weights from a checkpoint (a prefix, or a folder holding one)."""
        self._trainer.restore(path)

    def train_step(self, x, y, lr=LR):
        self._trainer.train_step(x, y, lr)

    def evaluate(self, x, y):
        """Per-image statistics of one test batch."""
        self._trainer.eval_per_image([(x, y)])

    def sample(self, y, temperature=0.7):
        self._trainer.sample(y, np.full([len(y)], temperature, np.float32))

    def train_step_run(self, x, y, lr=LR):
        """(fetches, feed) of train_step, for a traced run of the same step:
        the session then reuses that step's executor (a new one would be
        built, and XLA-compiled, for other fetches)."""
        t = self._trainer
        return [t.opt.train_op, t.opt.grads_finite, t.train_stats], {t.x: x, t.y: y, t.lr: lr, t.loss_scale: 1.0}

    def init_runs(self, x, y):
        """initialize's session runs one by one: [(name, fetches, feed)]
        (its broadcast of rank 0's weights, which one rank skips, left out)."""
        t = self._trainer
        return [("global_init", t.global_init, None), ("init_pass", t.init_loss, {t.x_init: x, t.y_init: y}),
                ("polyak_seed", t.opt.ema.seed_op, None)]

    def weights(self):
        """{variable name: value} of the trainable variables."""
        import tensorflow.compat.v1 as tf

        with self.graph.as_default():
            variables = tf.trainable_variables()
        return dict(zip([v.op.name for v in variables], self.sess.run(variables)))

    def close(self):
        self.sess.close()


def probe_session_config():
    """train.py's CPU session config with XLA off whatever the environment
    says (TF_XLA_FLAGS=--tf_xla_cpu_global_jit would compile even a session
    that did not ask): for the matmul probe, the yardstick."""
    import runtime
    import tensorflow.compat.v1 as tf

    config = runtime.session_config("cpu")
    config.graph_options.optimizer_options.global_jit_level = tf.OptimizerOptions.OFF
    return config


def loss_and_gradients(cfg, x, y, mode, unrolled=False, dequantize=True):
    """In the default graph, cfg's model on a batch (x uint8 [B, H, W, C],
    y int32 [B]; tensors): (mean training loss, trainable variables, their
    gradients in checkpointing `mode`). unrolled: the flow steps unrolled
    even where cfg loops them (the same FLOPs, in ops that can be counted);
    dequantize=False: without dequantisation noise."""
    import looped
    import memory_saving_gradients
    import model
    import tensorflow.compat.v1 as tf

    run_steps = (looped.looped_steps(mode) if cfg.loop_steps and not unrolled
                 else memory_saving_gradients.checkpointed_steps(mode))
    glow = model.Glow.from_config(cfg, run_steps=run_steps)
    loss = tf.reduce_mean(glow.losses(x, y, dequantize=dequantize)["loss"])
    params = tf.trainable_variables()
    return loss, params, memory_saving_gradients.gradients(loss, params, mode=mode)


def reconstruction_error(loss):
    """Scalar tensor: the largest relative error of the flow-step inputs
    that invertible backprop rebuilt, against the forward pass's
    (memory_saving_gradients.reconstruction_error; loss from
    loss_and_gradients)."""
    import memory_saving_gradients

    return memory_saving_gradients.reconstruction_error(loss)


def train_batches(problem, data_dir, dal, batch):
    """data_loaders' training batches (x, y) of `problem`: one pass at
    augmentation level `dal`, prepared by its background thread."""
    import data_loaders

    data = data_loaders.get_data(problem, data_dir=data_dir, dal=dal)
    return data.train_stream(batch, 0, (data.n_train // data.size) // batch)
