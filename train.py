#!/usr/bin/env python
"""Train Glow (Kingma & Dhariwal 2018) from the command line.

    python train.py --problem fashion-mnist --n_levels 3 --depth 8 --width 128 ...

Flags are openai/glow's (see config.py). The run writes to --logdir:
train.txt and test.txt (JSON lines, the first line the full config),
events.txt (skipped steps, recoveries), checkpoints/ (latest), best/ (best test
bits/dim) and samples/ (PNG grids at several temperatures).

Test bits/dim is reported twice: with the raw weights (`bits_x`, the paper's
and openai/glow's metric) and with their Polyak average (`bits_x_polyak`),
both over the whole test set on the same dequantisation noise, with the raw
evaluation's median and worst images. best/ follows the `--weights` figure
(raw by default); epoch samples use whichever weights test better then.

Other modes: --inference (encode the test set), --evaluate (test bits/dim of a
checkpoint, --per_image for a CSV of every image's), --sample N (a PNG grid
from a checkpoint).
"""
import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import config  # noqa: E402
import data_loaders  # noqa: E402
import modelarts  # noqa: E402
import runtime  # noqa: E402
import trainer as trainer_lib  # noqa: E402
import utils  # noqa: E402


class StopRequest(object):
    """The signal handler for Ctrl-C (SIGINT) and SIGTERM while training.

    The first signal only asks the loop to stop: it raises KeyboardInterrupt
    at its next check, between steps, and the run then saves and exits with
    status 130. A second signal interrupts at once. A KeyboardInterrupt
    raised by the handler itself (Python's default for SIGINT) lands
    wherever the main thread is, TensorFlow's own Python code included: on
    TF 2.21 some Ctrl-Cs then crashed the process (SIGSEGV, nothing saved)
    or were swallowed and training went on."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt("signal %d, again" % signum)
        self.signum = signum

    def install(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self)

    def check(self):
        if self.signum is not None:
            raise KeyboardInterrupt("signal %d" % self.signum)


class Run(object):
    """What the loop functions share: config, data, graph, loggers, rank."""

    def __init__(self, cfg, data, trainer, backend):
        self.cfg = cfg
        self.state = checkpoints.RunState()
        self.loss_scale = trainer_lib.LossScale(cfg.loss_scale)
        self.data = data
        self.trainer = trainer
        self.backend = backend
        self.chief = backend.is_chief()
        self.logdir = cfg.logdir
        self.stop = StopRequest()
        self.train_log = self.test_log = self.event_log = self.tensorboard = None
        if self.chief:
            self.train_log = utils.ResultLogger(os.path.join(self.logdir, "train.txt"), cfg.as_dict())
            self.test_log = utils.ResultLogger(os.path.join(self.logdir, "test.txt"), cfg.as_dict())
            self.event_log = utils.ResultLogger(os.path.join(self.logdir, "events.txt"), cfg.as_dict())
            if cfg.tensorboard:
                self.tensorboard = tf.summary.FileWriter(os.path.join(self.logdir, "tensorboard"))

    def say(self, *parts):
        if self.chief:
            print(*parts)
            sys.stdout.flush()

    def event(self, **fields):
        self.say("event:", " ".join("%s=%s" % kv for kv in sorted(fields.items())))
        if self.chief:
            self.event_log.log(**fields)

    def scalars(self, prefix, step, values):
        """TensorBoard scalars (with --tensorboard), e.g. train/bits_x."""
        if self.tensorboard is not None:
            self.tensorboard.add_summary(tf.Summary(value=[
                tf.Summary.Value(tag="%s/%s" % (prefix, k), simple_value=float(v)) for k, v in values.items()]),
                step)
            self.tensorboard.flush()

    def close(self):
        for log in (self.train_log, self.test_log, self.event_log, self.tensorboard):
            if log is not None:
                log.close()


# ---------------------------------------------------------------------------- loop


def train_one_epoch(run, epoch, skip=0):
    """One epoch: cfg.train_its steps of this rank's stream of batches, less
    its first `skip` (done before an interruption). Returns (mean stats,
    images/s)."""
    cfg, tr, state = run.cfg, run.trainer, run.state
    results, consecutive_bad = [], 0
    t0 = time.time()
    n_steps = 0
    show_bar = run.chief and sys.stdout.isatty() and not cfg.verbose
    batches = run.data.train_stream(cfg.local_batch_train, state.step, cfg.train_its - skip)
    try:
        for step, (x, y) in enumerate(batches, start=skip):
            lr = config.lr_at(cfg, state.n_processed) * state.lr_scale
            try:
                applied, stats = tr.train_step(x, y, lr, state.loss_scale)
                failure = None if applied else "non-finite loss or gradient"
            except tf.errors.InvalidArgumentError as e:
                # e.g. "Input is not invertible" from a 1x1 conv gone singular:
                # nothing was applied, treat it like a non-finite step.
                applied, stats = False, None
                failure = "%s in op %s" % (e.message.split("\n")[0], getattr(e.op, "name", "?"))
                if run.backend.size() > 1:
                    step_failed_on_one_rank(run, failure)
            state.n_processed += cfg.anchor_images_per_step
            state.step += 1
            n_steps += 1
            if run.loss_scale.update(state, applied):
                run.event(event="loss_scale_lowered", step=state.step, loss_scale=state.loss_scale)
            elif applied:
                consecutive_bad = 0
                results.append(stats)
            else:
                consecutive_bad += 1
                run.event(event="skipped_step", epoch=epoch, step=state.step, reason=failure,
                          consecutive=consecutive_bad)
                if consecutive_bad >= cfg.max_nonfinite:
                    recover(run)
                    consecutive_bad = 0
            if cfg.verbose:
                run.say(state.step, "lr %.6f" % lr, stats)
            elif show_bar and step % 10 == 0:
                sys.stdout.write("\repoch %d [%d/%d]" % (epoch, step, cfg.train_its))
                sys.stdout.flush()
            if cfg.max_steps and state.step >= cfg.max_steps:
                break
            run.stop.check()
    finally:
        # Stops the prefetch thread now, on an error too (the traceback would
        # keep the generator, and so the thread, alive).
        batches.close()
    if show_bar:
        sys.stdout.write("\r")
    dt = time.time() - t0
    mean = np.mean(results, axis=0) if results else np.full(len(trainer_lib.STATS), np.nan)
    return mean, n_steps * cfg.images_per_step / max(dt, 1e-9)


def step_failed_on_one_rank(run, failure):
    """An op error in this rank's training step, with other ranks: they ran
    (or wait in) this step's allreduce, which this rank never joined, so
    skipping here would pair its next step with their current one. Stop this
    rank instead (its launcher then stops the rest). The failed step changed
    no weight; if this rank is the chief it first saves the steps done so
    far (every rank holds the same weights, and saving needs no other rank)."""
    step = run.state.step + 1
    run.event(event="step_failed", step=step, rank=run.backend.rank(), reason=failure)
    if run.chief:
        save(run)
        kept = "rank 0 saved a checkpoint at step %d" % run.state.step
    else:
        kept = "the last checkpoint is intact"
    raise RuntimeError("rank %d of %d: %s in training step %d; with several ranks a failed step cannot be "
                       "skipped on one rank alone. %s: rerun with --resume"
                       % (run.backend.rank(), run.backend.size(), failure, step, kept))


def recover(run):
    """After max_nonfinite bad steps in a row: back to the last good
    checkpoint's weights, with the learning rate lowered; the steps taken
    since count on (the batches go on too)."""
    cfg, state = run.cfg, run.state
    folder = os.path.join(run.logdir, "checkpoints")
    prefix = checkpoints.latest(folder)
    if prefix is None:
        raise RuntimeError("%d non-finite steps in a row and no checkpoint in %s to go back to"
                           % (cfg.max_nonfinite, folder))
    run.trainer.restore(prefix)
    state.lr_scale *= cfg.lr_backoff
    run.event(event="recovered", step=state.step, checkpoint=os.path.basename(prefix), lr_scale=state.lr_scale)


N_WORST = 5  # worst test images named in each test line


def evaluate(run, n_draws=1):
    """The test set, whole, on every rank's share, with both weightings.

    Returns (line, per_image): `line` for test.txt, with the mean STATS of
    the raw weights under openai/glow's keys (bits_x: the paper's test
    bits/dim), those of the Polyak average under the same keys + "_polyak",
    the medians and the raw evaluation's N_WORST worst images as [test
    index, bits/dim]; `per_image`: {"raw", "polyak"}: STATS [4, n_test]
    in test-set order (on every rank)."""
    cfg, data, tr = run.cfg, run.data, run.trainer
    start, _ = data.test_range()
    per_image = {}
    for weights in trainer_lib.WEIGHTS:
        local = tr.eval_per_image(data.test_batches(cfg.local_batch_test), start, n_draws, weights)
        per_image[weights] = tr.gather(local, start, data.n_test)
    return test_line(per_image), per_image


def test_line(per_image):
    """The summary `evaluate` logs, from per-image STATS of each weighting."""
    line = {}
    bits = trainer_lib.STATS.index("bits_x")
    for weights, suffix in (("raw", ""), ("polyak", "_polyak")):
        stats = per_image[weights].astype(np.float64)
        line.update(("%s%s" % (k, suffix), float(v)) for k, v in zip(trainer_lib.STATS, stats.mean(axis=1)))
        line["median_bits_x" + suffix] = float(np.median(stats[bits]))
    raw = per_image["raw"][bits].astype(np.float64)
    worst = np.argsort(-np.where(np.isnan(raw), np.inf, raw), kind="stable")[:N_WORST]
    line.update(n_images=int(raw.size), worst_images=[[int(i), float(raw[i])] for i in worst])
    return line


def better_weights(line):
    """The weighting whose test bits/dim is lower in a test line ("raw" on a tie)."""
    return "polyak" if line["bits_x_polyak"] < line["bits_x"] else "raw"


def draw_samples(run, epoch, weights):
    """openai/glow's grids: one PNG per temperature, 10x10 (4x4 above 64 px);
    with --ycond each row shows classes 0, 1, ... (mod n_y), one per column.
    `weights` ("raw" or "polyak") draws them, and ends the file names."""
    if not run.chief:
        return
    cfg = run.cfg
    rows = 10 if cfg.image_size <= 64 else 4
    y = np.tile(np.arange(rows, dtype=np.int32), rows) % np.int32(cfg.n_y)
    folder = os.path.join(run.logdir, "samples")
    os.makedirs(folder, exist_ok=True)
    for t in config.TEMPERATURES:
        images = run.trainer.sample(y, np.full(len(y), t, np.float32), weights)
        utils.save_image_grid(images, os.path.join(folder, "epoch_%04d_t%.2f_%s.png" % (epoch, t, weights)),
                              n_cols=rows)


def save(run, best=False):
    """Checkpoint with the run state, on the chief; copied to --train_url on ModelArts."""
    if not run.chief:
        return
    path = run.trainer.save(run.logdir, run.state, best=best)
    if path is None:
        run.event(event="save_refused", reason="non-finite weights", step=run.state.step)
    if run.cfg.train_url:
        modelarts.sync_out(run.logdir, run.cfg.train_url)


def train(run):
    """Epochs from the run state's to --epochs (or --max_steps). The
    batches are a stream fixed by the seed and indexed by the step
    (Data.train_stream), so an epoch interrupted and resumed gets the
    batches the uninterrupted one would have."""
    cfg, state = run.cfg, run.state
    run.say("epoch  train_bits  test_bits  test_polyak  images/s  time(s)  lr")
    skip = state.step - state.epoch * cfg.train_its  # steps done in an interrupted epoch
    skip = skip if 0 < skip < cfg.train_its else 0
    if cfg.max_steps and state.step >= cfg.max_steps:
        run.say("already at step %d, --max_steps %d: nothing to train" % (state.step, cfg.max_steps))
        return
    sample_weights = "raw"  # until a test line says which weights test better
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        run.stop.check()
        t0 = time.time()
        step_before = state.step
        mean, ips = train_one_epoch(run, epoch, skip)
        # An epoch cut short by --max_steps is not done: a resumed run
        # finishes it (its train.txt line says partial).
        partial = skip + state.step - step_before < cfg.train_its
        skip = 0
        if not partial:
            state.epoch = epoch
        stats = dict(zip(trainer_lib.STATS, mean.tolist()))
        lr = config.lr_at(cfg, state.n_processed) * state.lr_scale
        if run.chief:
            run.train_log.log(epoch=epoch, n_processed=state.n_processed, step=state.step, ips=ips, lr=lr,
                              n_skipped=run.trainer.n_skipped(), **(dict(stats, partial=True) if partial else stats))
            run.scalars("train", state.step, dict(stats, images_per_s=ips))
        stop = bool(cfg.max_steps and state.step >= cfg.max_steps)
        test = end_of_epoch(run, epoch, stop)
        if test is not None:
            sample_weights = better_weights(test)
        if config.is_sample_epoch(cfg, epoch) or stop:
            draw_samples(run, epoch, sample_weights)
        if epoch % cfg.save_every == 0 or epoch == cfg.epochs or stop:
            save(run)
        run.say("%5d  %10.4f  %9s  %11s  %8.1f  %7.1f  %.2e" % (
            epoch, stats["bits_x"], "%.4f" % test["bits_x"] if test else "-",
            "%.4f" % test["bits_x_polyak"] if test else "-", ips, time.time() - t0, lr))
        if stop:
            run.say("stopped at --max_steps %d" % cfg.max_steps)
            break


def end_of_epoch(run, epoch, stop):
    """On openai/glow's test epochs (and at a stop): the test line, and
    best/ when the --weights figure improved. Returns the line or None."""
    cfg, state = run.cfg, run.state
    if not (config.is_eval_epoch(cfg, epoch) or stop):
        return None
    test, _ = evaluate(run)
    if run.chief:
        run.test_log.log(epoch=epoch, n_processed=state.n_processed, step=state.step, **test)
        run.scalars("test", state.step, {k: v for k, v in test.items() if k != "worst_images"})
    best_key = "loss" if cfg.weights == "raw" else "loss_polyak"
    if test[best_key] < state.best_test:
        state.best_test = test[best_key]
        save(run, best=True)
    return test


# ---------------------------------------------------------------------------- modes


def run_inference(run):
    """Encode the test set to logdir/z.npy (with x.npy and y.npy) and check that
    decoding z gives back x."""
    zs, xs, ys, mismatched = [], [], [], 0
    for x, y in run.data.test_batches(run.cfg.local_batch_test):
        z, x_back = run.trainer.encode(x, y, run.cfg.weights)
        mismatched += int(np.sum(np.any(x_back != x, axis=(1, 2, 3))))
        zs.append(z)
        xs.append(x)
        ys.append(y)
    suffix = "" if run.backend.size() == 1 else "_rank%d" % run.backend.rank()
    for name, arrays in (("z", zs), ("x", xs), ("y", ys)):
        np.save(os.path.join(run.logdir, name + suffix + ".npy"), np.concatenate(arrays))
    n = sum(len(x) for x in xs)
    print("inference: encoded %d test images to %s with the %s weights; decoding reproduced %d of them exactly"
          % (n, os.path.join(run.logdir, "z%s.npy" % suffix), run.cfg.weights, n - mismatched))
    return 0 if mismatched == 0 else 1


def run_sample(run):
    cfg = run.cfg
    n = cfg.sample
    y = np.arange(n, dtype=np.int32) % cfg.n_y
    images = run.trainer.sample(y, np.full(n, cfg.temperature, np.float32), cfg.weights)
    path = os.path.join(run.logdir, "samples_t%.2f_%s.png" % (cfg.temperature, cfg.weights))
    if run.chief:
        utils.save_image_grid(images, path)
        print("sample: %d images at temperature %.2f with the %s weights -> %s"
              % (n, cfg.temperature, cfg.weights, path))
    return 0


def run_evaluate(run):
    """Test bits/dim of a checkpoint with both weightings (a test line
    marked mode "evaluate"), averaged over --n_dequant_draws draws; with
    --per_image, every test image's to LOGDIR/test_bits_per_image.csv."""
    cfg = run.cfg
    line, per_image = evaluate(run, cfg.n_dequant_draws)
    if not run.chief:
        return 0
    run.test_log.log(mode="evaluate", n_dequant_draws=cfg.n_dequant_draws, **line)
    print("evaluate: test bits/dim %.4f with the raw weights, %.4f with the Polyak average, over %d images "
          "(%d dequantisation draws); raw median %.4f, worst %s"
          % (line["bits_x"], line["bits_x_polyak"], line["n_images"], cfg.n_dequant_draws, line["median_bits_x"],
             ", ".join("%.4f (test image %d)" % (b, i) for i, b in line["worst_images"][:3])))
    if cfg.per_image:
        path = os.path.join(run.logdir, "test_bits_per_image.csv")
        write_per_image(path, per_image, cfg.n_dequant_draws)
        print("evaluate: bits/dim of each test image -> %s" % path)
    return 0


def write_per_image(path, per_image, n_draws):
    """CSV, one row per test image in test-set order: its index, bits/dim
    with the raw and with the Polyak weights (dequantisation draws averaged)."""
    bits = trainer_lib.STATS.index("bits_x")
    rows = ["index,bits_x,bits_x_polyak,n_dequant_draws"]
    for i, (raw, avg) in enumerate(zip(per_image["raw"][bits], per_image["polyak"][bits])):
        rows.append("%d,%.6f,%.6f,%d" % (i, raw, avg, n_draws))
    utils.atomic_write_bytes(path, ("\n".join(rows) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------- setup


def prepare_logdir(path, fresh_run):
    """Create --logdir, or fail clearly before any work when it cannot be
    used. A fresh training run (not --resume, not a mode) is refused where a
    run already keeps its checkpoints: it would overwrite that run's best
    checkpoint, samples and same-numbered checkpoints."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError("--logdir %s is a file; give a folder" % path)
    if fresh_run and os.path.exists(os.path.join(path, "checkpoints", "checkpoint")):
        raise ValueError("--logdir %s already holds a run (checkpoints/): continue it with --resume, "
                         "or give a new --logdir" % path)
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK):
        raise ValueError("--logdir %s is not writable" % path)
    return path


def run_checkpoint(args):
    """The checkpoint a run starts from, for --resume and the modes (the
    latest in --logdir/checkpoints unless --restore_path) and
    --restore_path; None for a fresh run."""
    if args.restore_path:
        return checkpoints.resolve(args.restore_path)
    if not (args.resume or args.inference or args.evaluate or args.sample):
        return None
    prefix = checkpoints.latest(os.path.join(args.logdir, "checkpoints"))
    if prefix is None:
        raise ValueError("--logdir %s has no checkpoint in checkpoints/ to %s"
                         % (args.logdir, "resume from" if args.resume else "use; give --restore_path"))
    return prefix


def start(run, args, prefix):
    """Initialise the weights, or restore them from `prefix` (with its run
    state for --resume and the modes; a fresh state for --restore_path)."""
    tr, cfg = run.trainer, run.cfg
    if prefix is None:
        tr.initialize(*run.data.init_batch(cfg.local_batch_init))
        run.loss_scale.start(run.state, restored=False)
        save(run)  # a good checkpoint to fall back to from the first step
        return
    _, state = tr.restore(prefix)
    if args.restore_path and not args.resume and not (args.inference or args.evaluate or args.sample):
        run.loss_scale.start(run.state, restored=False)
        run.say("started from weights of %s" % prefix)
        return
    run.state = state
    run.loss_scale.start(state, restored=True)
    if args.resume:
        tr.checkpoints.adopt(run.logdir)
    run.say("restored %s (epoch %d, step %d)" % (prefix, state.epoch, state.step))
    run.event(event="resumed" if args.resume else "restored", checkpoint=prefix, **state.as_dict())


def _interrupt(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def load_data(args, backend):
    """The data of --problem, from --data_dir, --data_url (ModelArts) or the
    standard places."""
    data_dir = args.data_dir
    if args.data_url:
        # One copy per rank: processes on one node must not copy into the same folder.
        local = "modelarts" if backend.size() == 1 else "modelarts-rank%d" % backend.rank()
        data_dir = modelarts.sync_in(args.data_url, os.path.join(os.path.expanduser("~"), ".cache", "glow-data",
                                                                 local))
    if args.category:
        data_dir = os.path.join(data_dir, args.category)
    return data_loaders.get_data(
        args.problem, data_dir=data_dir or None, image_size=None if args.image_size == -1 else args.image_size,
        n_train=args.train_subset, n_test=None if args.n_test == -1 else args.n_test, dal=args.dal,
        seed=args.seed, rank=backend.rank(), size=backend.size(), n_channels=args.n_channels)


def main(argv=None):
    # SIGTERM (a scheduler stopping the job) saves and exits like Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    args = config.parse_args(argv)
    config.check_args(args)
    if args.unknown_args:
        # Only with --data_url/--train_url (ModelArts' launcher adds its own);
        # a misspelt flag of ours lands here too. Also in the config line.
        sys.stderr.write("ignoring unknown arguments: %s\n" % " ".join(args.unknown_args))
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    prefix = run_checkpoint(args)
    saved = checkpoints.saved_config(prefix) if prefix else None
    if saved is not None:
        args = config.adopt_run(args, saved, prefix)
    # Process-wide, before the graph allocates; recorded in the config line.
    args.malloc_settings = runtime.tune_malloc()
    backend = runtime.make_backend(runtime.detect_backend(args.backend, args.device), args.device)
    run = None
    try:
        data = load_data(args, backend)
        args.logdir = prepare_logdir(args.logdir, fresh_run=not (args.resume or args.inference or args.evaluate
                                                                    or args.sample))
        cfg = config.derive_config(args, data.image_shape, data.n_y, data.n_train, data.n_test, backend.size())
        trainer = trainer_lib.Trainer(cfg, backend, lambda graph: runtime.make_session(
            cfg.device, backend, precision_mode=cfg.precision_mode, xla=cfg.xla, graph=graph))
        run = Run(cfg, data, trainer, backend)
        start(run, args, prefix)
        for flag, mode in (("inference", run_inference), ("evaluate", run_evaluate), ("sample", run_sample)):
            if getattr(cfg, flag):
                return mode(run)
        try:
            run.stop.install()
            train(run)
        except KeyboardInterrupt:
            run.say("\ninterrupted: saving a checkpoint at step %d; continue with --resume" % run.state.step)
            save(run)
            return 130
        if run.chief and cfg.train_url:
            modelarts.sync_out(run.logdir, cfg.train_url)
        run.say("finished: logs and checkpoints in %s" % run.logdir)
        return 0
    finally:
        if run is not None:
            run.close()
        backend.close()


def cli(argv=None):
    """Entry point: user mistakes and missing pieces (bad flags, missing data,
    npu_bridge or Horovod not installed) end with one clear line and exit
    status 2, not a traceback."""
    try:
        return main(argv)
    except (ValueError, RuntimeError, OSError) as e:
        # OSError: a --logdir that cannot be made or written (a file in its
        # path, a read-only or full disk); checkpoints already written stay.
        if os.environ.get("GLOW_TRACEBACK"):
            raise
        sys.stderr.write("error: %s\n(set GLOW_TRACEBACK=1 for the traceback)\n" % e)
        return 2
    except KeyboardInterrupt:
        # Outside the training loop (loading data, building the graph, a
        # mode such as --evaluate), or a second signal while saving.
        sys.stderr.write("interrupted outside the training loop: no checkpoint was written for it\n")
        return 130


if __name__ == "__main__":
    sys.exit(cli())
