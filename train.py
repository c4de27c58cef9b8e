#!/usr/bin/env python
"""Train Glow (Kingma & Dhariwal 2018): `python train.py --problem cifar10 ...` with openai/glow's flags
(config.py). A run writes to --logdir: train.txt, test.txt, events.txt (JSON lines, the first the full config),
checkpoints/, best/ and samples/. Modes: --inference, --evaluate [--per_image], --sample N, --export DIR.
"""
import os
import shutil
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import config  # noqa: E402
import data_loaders  # noqa: E402
import evaluator  # noqa: E402
import export  # noqa: E402
import modelarts  # noqa: E402
import runtime  # noqa: E402
import trainer as trainer_lib  # noqa: E402
import utils  # noqa: E402

N_WORST = 5  # worst test images named in each test line


class StopRequest(object):
    """Ctrl-C and SIGTERM while training: the first sets `signum`; the loop stops between steps (the run saves,
    status 130), on every rank after the same step (Trainer.stop_agreed, agree_stop: a stop flag allreduced with
    each step); a second interrupts at once. Raised in the handler, a KeyboardInterrupt could land inside
    TensorFlow's Python code, which crashed or swallowed it (TF 2.21)."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt("signal %d, again" % signum)
        self.signum = signum

    def install(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self)

    def requested(self):
        return self.signum is not None

    def check(self, agreed):
        """KeyboardInterrupt if `agreed` (every rank's answer to "does any rank ask to stop?")."""
        if agreed:
            raise KeyboardInterrupt("a stop asked for (signal %s here, or on another rank)" % self.signum)


class Run(object):
    """What the loop functions share: config, data, graphs (a trainer.Trainer, or for a mode an
    evaluator.Evaluator: the model only), run state, rank, logs (the chief's)."""

    def __init__(self, cfg, data, graphs, backend):
        self.cfg, self.data, self.graphs, self.backend = cfg, data, graphs, backend
        self.state, self.loss_scale = checkpoints.RunState(), trainer_lib.LossScale(cfg.loss_scale)
        self.chief, self.logdir, self.stop = backend.is_chief(), cfg.logdir, StopRequest()
        self.logs = dict((name, utils.ResultLogger(os.path.join(self.logdir, name + ".txt"), cfg.as_dict()))
                         for name in ("train", "test", "events") if self.chief)
        self.tensorboard = (tf.summary.FileWriter(os.path.join(self.logdir, "tensorboard"))
                            if self.chief and cfg.tensorboard else None)
        for log in self.logs.values():
            if log.repaired:
                self.event(event="torn_log_line", file=log.path, note="a crash cut its last line; readers skip it")

    def say(self, *parts):
        if self.chief:
            print(*parts, flush=True)

    def log(self, name, scalars=None, **fields):
        """A line of LOGDIR/<name>.txt (train, test or events); with --tensorboard also `scalars` ({key: number}) as
        <name>/<key> at the current step."""
        if self.chief:  # on a full disk: room as for a checkpoint, one more try
            trainer = self.graphs if isinstance(self.graphs, trainer_lib.Trainer) else None
            checkpoints.with_room(lambda: self.logs[name].log(**fields), lambda: trainer is not None and (
                trainer.checkpoints.make_room(self.logdir)), self.logdir, lambda: 4096)
        if scalars:
            self.summarize(*[tf.Summary.Value(tag="%s/%s" % (name, k), simple_value=float(v))
                             for k, v in scalars.items()])

    def summarize(self, *values):
        """With --tensorboard (on the chief): tf.Summary.Values (utils.image_summary, histogram_summary, scalars)
        at the current step."""
        if self.tensorboard is not None:
            self.tensorboard.add_summary(tf.Summary(value=list(values)), self.state.step)
            self.tensorboard.flush()

    def event(self, **fields):
        self.say("event:", " ".join("%s=%s" % kv for kv in sorted(fields.items())))
        self.log("events", **fields)

    def close(self):
        for log in filter(None, list(self.logs.values()) + [self.tensorboard]):
            log.close()


def train_one_epoch(run, epoch, skip=0):
    """cfg.train_its steps of this rank's batch stream, less the `skip` done
    before an interruption. Returns (the applied steps' mean {name in STATS: value}, images/s)."""
    cfg, state = run.cfg, run.state
    results, n_bad, first_step, t0 = [], 0, state.step, time.time()
    progress = utils.Progress(cfg.train_its, "epoch %d" % epoch, cfg.images_per_step, initial=skip,
                              stream=sys.stdout if run.chief and not cfg.verbose else None,
                              every_seconds=cfg.progress_seconds)
    batches = run.data.train_stream(cfg.local_batch_train, state.step, cfg.train_its - skip)
    try:
        for i, (x, y) in enumerate(batches, start=skip):
            lr = config.lr_at(cfg, state.n_processed) * state.lr_scale
            applied, stats, failure = _step(run, x, y, lr)
            state.n_processed += cfg.anchor_images_per_step
            state.step += 1
            if run.loss_scale.update(state, applied):
                run.event(event="loss_scale_lowered", step=state.step, loss_scale=state.loss_scale)
            elif applied:
                n_bad = 0
                results.append(stats)
            else:
                n_bad += 1
                run.event(event="skipped_step", epoch=epoch, step=state.step, reason=failure, consecutive=n_bad)
                if n_bad >= cfg.max_nonfinite:
                    recover(run)
                    n_bad = 0
            if cfg.verbose:
                run.say(state.step, "lr %.6f" % lr, np.array([stats[k] for k in evaluator.STATS], np.float32),
                        "grad_norm %.4g" % run.graphs.grad_norm)
            progress.update(i + 1, stats["bits_x"] if applied else None)
            if cfg.max_steps and state.step >= cfg.max_steps:
                break
            run.stop.check(run.graphs.stop_agreed)
    finally:
        batches.close()  # its prefetch thread stops now, also on an error (a traceback would keep it)
        progress.close()
    mean = dict((k, float(np.mean([r[k] for r in results])) if results else float("nan")) for k in evaluator.STATS)
    return mean, (state.step - first_step) * cfg.images_per_step / max(time.time() - t0, 1e-9)


def _step(run, x, y, lr):
    """One step: (applied, its means {name: value}, why not applied). An op error ("Input is not invertible": a singular
    1x1 conv) applied nothing: with one rank a skipped step; with several, the others are in this step's
    allreduce, so skipping would pair this rank's next step with their current one: it stops (rank 0 first saves;
    its launcher stops the rest)."""
    try:
        applied, stats = run.graphs.train_step(x, y, lr, run.state.loss_scale, stop=run.stop.requested())
        return applied, stats, None if applied else "non-finite loss or gradient"
    except tf.errors.InvalidArgumentError as e:
        failure = "%s in op %s" % (e.message.split("\n")[0], getattr(e.op, "name", "?"))
    if run.backend.size() == 1:
        return False, None, failure
    step, rank = run.state.step + 1, run.backend.rank()
    run.event(event="step_failed", step=step, rank=rank, reason=failure)
    save(run)
    kept = "rank 0 saved a checkpoint at step %d" % run.state.step if run.chief else "the last checkpoint is intact"
    raise RuntimeError("rank %d of %d: %s in training step %d; with several ranks a failed step cannot be skipped "
                       "on one rank alone. %s: rerun with --resume" % (rank, run.backend.size(), failure, step, kept))


# Words of the errors a collective op raises when another rank stalled or died (Horovod over Gloo, MPI, NCCL).
COLLECTIVE_FAILURES = ("Horovod has been shut down", "Gloo", "gloo", "Timed out", "timed out", "Connection", "NCCL")


def lost_rank(run, error):
    """The line for an op error in a run of several ranks, other than a failed step's (_step). A collective op
    that failed (COLLECTIVE_FAILURES) means another rank stalled (no answer within the transport's timeout: Gloo's
    is HOROVOD_GLOO_TIMEOUT_SECONDS, 30 s by default) or died; any other error is this rank's own, and its launcher
    stops the others. Nothing is saved (a step cut short in its allreduce may have updated some weights and not
    others); the last checkpoint is intact. Every live rank prints this: the ranks missing from these lines are the
    ones that stalled or died."""
    rank, size = run.backend.rank(), run.backend.size()
    others = [r for r in range(size) if r != rank]
    who = "rank %d" % others[0] if len(others) == 1 else "one of ranks %s" % ", ".join(map(str, others))
    if any(words in error.message for words in COLLECTIVE_FAILURES):
        cause = ("%s stalled or died (a rank that stops answering ends the job after the transport's timeout: "
                 "Gloo's HOROVOD_GLOO_TIMEOUT_SECONDS, 30 s by default)" % who)
    else:
        cause = "%s (this rank's own error; the launcher stops the others)" % error.message.split("\n")[0][:300]
    latest = checkpoints.latest(os.path.join(run.logdir, "checkpoints")) if run.chief else None
    kept = ("the last checkpoint, %s, is intact: rerun with --resume" % os.path.basename(latest) if latest else
            "the last checkpoint is intact: rerun with --resume" if not run.chief else
            "no checkpoint was written yet: run the command again")
    return "rank %d of %d: %s in %s after step %d: %s; %s" % (
        rank, size, type(error).__name__, getattr(error.op, "name", "an op"), run.state.step, cause, kept)


def recover(run):
    """After --max_nonfinite bad steps in a row: the last checkpoint's weights,
    a lower learning rate; the step count and the batches go on."""
    folder = os.path.join(run.logdir, "checkpoints")
    prefix = checkpoints.latest(folder)
    if prefix is None:
        raise RuntimeError("%d non-finite steps in a row and no checkpoint in %s to go back to"
                           % (run.cfg.max_nonfinite, folder))
    run.graphs.restore(prefix)
    run.state.lr_scale *= run.cfg.lr_backoff
    run.event(event="recovered", step=run.state.step, checkpoint=os.path.basename(prefix), lr_scale=run.state.lr_scale)


def evaluate(run, n_draws=1):
    """The whole test set (each rank its share) with both weightings: (its
    test_line, {"raw", "polyak"}: {name in STATS: [n_test]} in test-set order)."""
    tr, start = run.graphs, run.data.test_range()[0]
    local = tr.eval_weightings(run.data.test_batches(run.cfg.local_batch_test), start, n_draws, evaluator.WEIGHTS)
    per_image = dict((w, tr.gather(stats, start, run.data.n_test)) for w, stats in local.items())
    return test_line(per_image), per_image


def test_line(per_image):
    """test.txt's line from per-image statistics: the means under openai/glow's keys (raw weights; + "_polyak": their
    average), the medians, and the raw weights' N_WORST worst images as [test index, bits/dim]."""
    line = {}
    for weights, suffix in (("raw", ""), ("polyak", "_polyak")):
        stats = per_image[weights]
        line.update(("%s%s" % (k, suffix), float(np.mean(stats[k], dtype=np.float64))) for k in evaluator.STATS)
        line["median_bits_x" + suffix] = float(np.median(stats["bits_x"].astype(np.float64)))
    raw = per_image["raw"]["bits_x"].astype(np.float64)
    worst = np.argsort(-np.where(np.isnan(raw), np.inf, raw), kind="stable")[:N_WORST]
    line.update(n_images=int(raw.size), worst_images=[[int(i), float(raw[i])] for i in worst])
    return line


def better_weights(line):
    """The weighting whose test bits/dim is lower in a test line ("raw" on a tie)."""
    return "polyak" if line["bits_x_polyak"] < line["bits_x"] else "raw"


def draw_samples(run, epoch, weights):
    """openai/glow's grids (on the chief): a PNG per temperature, 10x10 (4x4
    above 64 px), each row classes 0, 1, ... (mod n_y), with the `weights`."""
    if not run.chief:
        return
    rows, folder = 10 if run.cfg.image_size <= 64 else 4, os.path.join(run.logdir, "samples")
    y = np.tile(np.arange(rows, dtype=np.int32), rows) % np.int32(run.cfg.n_y)
    os.makedirs(folder, exist_ok=True)
    for t in config.TEMPERATURES:
        path = os.path.join(folder, "epoch_%04d_t%.2f_%s.png" % (epoch, t, weights))
        png = utils.save_image_grid(run.graphs.sample(y, np.full(len(y), t, np.float32), weights), path, n_cols=rows)
        run.summarize(utils.image_summary("samples/t%.2f" % t, png))


def save(run, best=False):
    """A checkpoint with the run state (on the chief; never of non-finite weights), synced to --train_url."""
    if not run.chief:
        return
    if run.graphs.save(run.logdir, run.state, best=best) is None:
        run.event(event="save_refused", reason="non-finite weights", step=run.state.step)
    if run.cfg.train_url:
        modelarts.sync_out(run.logdir, run.cfg.train_url)


def train(run):
    """Epochs from the run state's to --epochs (or --max_steps): a train line, on openai/glow's test epochs a
    test line (best/: the --weights figure). The batches are a stream indexed by the step (Data.train_stream): a
    resumed epoch gets those the uninterrupted one would have."""
    cfg, state = run.cfg, run.state
    run.say("epoch  train_bits  test_bits  test_polyak  images/s  time(s)  lr")
    skip = state.step - state.epoch * cfg.train_its  # steps done in an interrupted epoch
    skip = skip if 0 < skip < cfg.train_its else 0
    if cfg.max_steps and state.step >= cfg.max_steps:
        run.say("already at step %d, --max_steps %d: nothing to train" % (state.step, cfg.max_steps))
        return
    sample_weights = "raw"  # until a test line says which weights test better
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        run.stop.check(run.graphs.agree_stop(run.stop.requested()))
        t0, step_before = time.time(), state.step
        stats, ips = train_one_epoch(run, epoch, skip)
        # An epoch cut short by --max_steps is not done: a resumed run finishes it.
        partial, skip = skip + state.step - step_before < cfg.train_its, 0
        if not partial:
            state.epoch = epoch
        lr = config.lr_at(cfg, state.n_processed) * state.lr_scale
        run.log("train", dict(stats, images_per_s=ips, lr=lr), epoch=epoch, n_processed=state.n_processed,
                step=state.step, ips=ips, lr=lr, n_skipped=run.graphs.n_skipped(),
                **(dict(stats, partial=True) if partial else stats))
        stop, test = bool(cfg.max_steps and state.step >= cfg.max_steps), None
        if config.is_eval_epoch(cfg, epoch) or stop:
            t_eval = time.time()
            test, per_image = evaluate(run)
            test["eval_seconds"] = round(time.time() - t_eval, 2)  # both weightings, the whole test set
            run.summarize(utils.histogram_summary("test/bits_x_per_image", per_image["raw"]["bits_x"]))
            run.log("test", dict((k, v) for k, v in test.items() if k != "worst_images"), epoch=epoch,
                    n_processed=state.n_processed, step=state.step, **test)
            sample_weights = better_weights(test)
            loss = test["loss_polyak" if cfg.weights == "polyak" else "loss"]
            if loss < state.best_test:
                state.best_test = loss
                save(run, best=True)
        if config.is_sample_epoch(cfg, epoch) or stop:
            draw_samples(run, epoch, sample_weights)
        if epoch % cfg.save_every == 0 or epoch == cfg.epochs or stop:
            save(run)
        run.say("%5d  %10.4f  %9s  %11s  %8.1f  %7.1f  %.2e" % (
            epoch, stats["bits_x"], "%.4f" % test["bits_x"] if test else "-",
            "%.4f" % test["bits_x_polyak"] if test else "-", ips, time.time() - t0, lr))
        if stop:
            run.say("stopped at --max_steps %d" % cfg.max_steps)
            return


def run_training(run):
    """train() to the end (status 0), or until Ctrl-C/SIGTERM: then it saves (status 130)."""
    try:
        run.stop.install()
        train(run)
    except KeyboardInterrupt:
        run.say("\ninterrupted: saving a checkpoint at step %d; continue with --resume" % run.state.step)
        save(run)
        return 130
    if run.chief and run.cfg.train_url:
        modelarts.sync_out(run.logdir, run.cfg.train_url)
    run.say("finished: logs and checkpoints in %s" % run.logdir)
    return 0


def run_inference(run):
    """Encode the test set to logdir/z.npy (with x.npy and y.npy; _rank<r> in
    the names with several ranks) and check that decoding z gives back x."""
    cfg, parts, mismatched = run.cfg, [], 0
    for x, y in run.data.test_batches(cfg.local_batch_test):
        z = run.graphs.encode(x, y, cfg.weights)
        x_back = run.graphs.decode(z, y, cfg.weights)
        mismatched += int(np.sum(np.any(x_back != x, axis=(1, 2, 3))))
        parts.append((z, x, y))
    suffix = "" if run.backend.size() == 1 else "_rank%d" % run.backend.rank()
    for name, arrays in zip(("z", "x", "y"), zip(*parts)):
        np.save(os.path.join(run.logdir, name + suffix + ".npy"), np.concatenate(arrays))
    n = sum(len(x) for _, x, _ in parts)
    print("inference: encoded %d test images to %s with the %s weights; decoding reproduced %d of them exactly"
          % (n, os.path.join(run.logdir, "z%s.npy" % suffix), cfg.weights, n - mismatched))
    return 0 if mismatched == 0 else 1


def run_sample(run):
    """--sample N images at --temperature with the --weights, of classes 0, 1, ... (mod n_y), as one PNG grid."""
    cfg = run.cfg
    y, temperatures = np.arange(cfg.sample, dtype=np.int32) % cfg.n_y, np.full(cfg.sample, cfg.temperature, np.float32)
    images = run.graphs.sample(y, temperatures, cfg.weights)
    path = os.path.join(run.logdir, "samples_t%.2f_%s.png" % (cfg.temperature, cfg.weights))
    if run.chief:
        utils.save_image_grid(images, path)
    run.say("sample: %d images at temperature %.2f with the %s weights -> %s"
            % (cfg.sample, cfg.temperature, cfg.weights, path))
    return 0


def run_evaluate(run):
    """A test line (mode "evaluate") of the checkpoint, over --n_dequant_draws
    noise draws; --per_image: every image's to LOGDIR/test_bits_per_image.csv."""
    cfg = run.cfg
    line, per_image = evaluate(run, cfg.n_dequant_draws)
    run.log("test", mode="evaluate", n_dequant_draws=cfg.n_dequant_draws, **line)
    run.say("evaluate: test bits/dim %.4f with the raw weights, %.4f with the Polyak average, over %d images "
            "(%d dequantisation draws); raw median %.4f, worst %s"
            % (line["bits_x"], line["bits_x_polyak"], line["n_images"], cfg.n_dequant_draws, line["median_bits_x"],
               ", ".join("%.4f (test image %d)" % (b, i) for i, b in line["worst_images"][:3])))
    if cfg.per_image and run.chief:
        path = os.path.join(run.logdir, "test_bits_per_image.csv")
        write_per_image(path, per_image, cfg.n_dequant_draws)
        run.say("evaluate: bits/dim of each test image -> %s" % path)
    return 0


def write_per_image(path, per_image, n_draws):
    """CSV, a row per test image in order: index, bits/dim with raw and Polyak weights."""
    rows = ["%d,%.6f,%.6f,%d" % (i, raw, avg, n_draws)
            for i, (raw, avg) in enumerate(zip(per_image["raw"]["bits_x"], per_image["polyak"]["bits_x"]))]
    text = "\n".join(["index,bits_x,bits_x_polyak,n_dequant_draws"] + rows) + "\n"
    utils.atomic_write_bytes(path, text.encode("utf-8"))


def run_export(args, prefix, saved):
    """--export DIR: the checkpoint as a SavedModel and frozen graphs (export.py), from the run folder alone."""
    if saved is None:
        raise ValueError("%s carries no run config (written by an older version): %s" % (prefix, checkpoints.UPGRADE))
    functions = export.export(prefix, saved, args.export, args.weights, args.export_batch)
    print("export: the %s weights of %s -> %s (saved_model/, frozen/%s.pb with static batch %d, signatures.json)"
          % (args.weights, prefix, args.export, "{%s}" % ",".join(sorted(functions)), args.export_batch))
    return 0


def _mode(args):
    """The function of the mode asked for (--inference, --evaluate, --sample N), or None (run_training)."""
    modes = (("inference", run_inference), ("evaluate", run_evaluate), ("sample", run_sample))
    return next((run_mode for flag, run_mode in modes if getattr(args, flag)), None)


def prepare_logdir(path, fresh_run):
    """Create --logdir, or fail before any work. A fresh training run is
    refused where a run keeps its checkpoints (it would overwrite them)."""
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


def run_checkpoint(args, skipped):
    """The checkpoint a run starts from: --restore_path, or for --resume and the modes the newest readable one in
    --logdir/checkpoints (those passed over for being unreadable appended to `skipped`); None for a fresh run."""
    if args.restore_path:
        return checkpoints.resolve(args.restore_path, skipped)
    if not (args.resume or _mode(args) or args.export):
        return None
    prefix = checkpoints.latest(os.path.join(args.logdir, "checkpoints"), skipped)
    if prefix is None:
        raise ValueError("--logdir %s has no checkpoint in checkpoints/ to %s"
                         % (args.logdir, "resume from" if args.resume else "use; give --restore_path"))
    return prefix


def start(run, args, prefix, skipped=()):
    """Initialise the weights, or restore them from `prefix`: with its run state for --resume and the modes, with a
    fresh one for --restore_path. `skipped`: (prefix, why) of newer checkpoints that could not be read."""
    for bad, why in skipped:
        run.event(event="checkpoint_unreadable", checkpoint=bad, reason=why, instead=prefix)
    if run.chief and isinstance(run.graphs, trainer_lib.Trainer):
        need, free = run.graphs.checkpoints.size(run.logdir), shutil.disk_usage(run.logdir).free
        if free < 2 * need:
            run.event(event="low_disk_space", free_mb=round(free / 1e6, 1), checkpoint_mb=round(need / 1e6, 1),
                      note="less than two checkpoints' room in --logdir: saving may fail")
    if prefix is None:
        run.graphs.initialize(*run.data.init_batch(run.cfg.local_batch_init))
        run.loss_scale.start(run.state, restored=False)
        save(run)  # a good checkpoint to fall back to from the first step
    elif not (args.resume or _mode(args)):
        run.graphs.restore(prefix)
        run.loss_scale.start(run.state, restored=False)
        run.say("started from weights of %s" % prefix)
    else:
        _, run.state = run.graphs.restore(prefix)
        run.loss_scale.start(run.state, restored=True)
        if args.resume:
            run.graphs.checkpoints.adopt(run.logdir)
        run.say("restored %s (epoch %d, step %d)" % (prefix, run.state.epoch, run.state.step))
        run.event(event="resumed" if args.resume else "restored", checkpoint=prefix, **run.state.as_dict())


def load_data(args, backend):
    """--problem's data from --data_dir, the standard places or --data_url
    (ModelArts; a copy per rank, as ranks on a node must not share a folder)."""
    data_dir = args.data_dir
    if args.data_url:
        local = "modelarts" if backend.size() == 1 else "modelarts-rank%d" % backend.rank()
        data_dir = modelarts.sync_in(args.data_url, os.path.expanduser(os.path.join("~/.cache/glow-data", local)))
    return data_loaders.get_data(
        args.problem, data_dir=os.path.join(data_dir, args.category) if args.category else data_dir or None,
        image_size=None if args.image_size == -1 else args.image_size, n_train=args.train_subset,
        n_test=None if args.n_test == -1 else args.n_test, dal=args.dal, seed=args.seed, rank=backend.rank(),
        size=backend.size(), n_channels=args.n_channels)


def main(argv=None):
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler stopping the job: as Ctrl-C
    args = config.parse_args(argv)
    config.check_args(args)
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    skipped = []
    prefix = run_checkpoint(args, skipped)
    saved = checkpoints.saved_config(prefix) if prefix else None
    if args.export:
        for bad, why in skipped:  # (start says it for the other modes, in the run's events too)
            print("checkpoint %s cannot be read (%s): using %s" % (bad, why, prefix))
        return run_export(args, prefix, saved)
    if saved is not None:
        args = config.adopt_run(args, saved, prefix)
    malloc_settings = runtime.tune_malloc()  # process-wide, before the graph allocates
    backend = runtime.make_backend(runtime.detect_backend(args.backend, args.device), args.device)
    run = None
    try:
        # --sample reads no data: a run's config has the data's facts.
        facts = (saved["image_shape"], saved["n_y"], saved["n_train_images"], saved["n_test"]) if (
            args.sample and saved is not None) else None
        data = None if facts else load_data(args, backend)
        logdir = prepare_logdir(args.logdir, fresh_run=not (args.resume or _mode(args)))
        cfg = config.derive_config(args, *(facts or (data.image_shape, data.n_y, data.n_train, data.n_test)),
                                   n_ranks=backend.size(), logdir=logdir, malloc_settings=malloc_settings)
        # A mode uses the model only: no gradients, no optimizer (a checkpoint's optimizer state is left out).
        graphs = (evaluator.Evaluator if _mode(args) else trainer_lib.Trainer)(cfg, backend, lambda graph: (
            runtime.make_session(cfg.device, backend, precision_mode=cfg.precision_mode, xla=cfg.xla, graph=graph)))
        run = Run(cfg, data, graphs, backend)
        start(run, args, prefix, skipped)
        try:
            return (_mode(cfg) or run_training)(run)
        except tf.errors.OpError as e:
            if backend.size() == 1:
                raise
            raise RuntimeError(lost_rank(run, e)) from e
    finally:
        if run is not None:
            run.close()
        backend.close()


def cli(argv=None):
    """Entry point: user mistakes and missing pieces (bad flags, missing data,
    npu_bridge or Horovod) end with one clear line and status 2, no traceback."""
    try:
        return main(argv)
    except (ValueError, RuntimeError, OSError) as e:
        # OSError: a --logdir that cannot be made or written; checkpoints stay.
        if os.environ.get("GLOW_TRACEBACK"):
            raise
        sys.stderr.write("error: %s\n(set GLOW_TRACEBACK=1 for the traceback)\n" % e)
        return 2
    except KeyboardInterrupt:
        # Outside the training loop (loading, building, a mode) or while saving.
        sys.stderr.write("interrupted outside the training loop: no checkpoint was written for it\n")
        return 130


if __name__ == "__main__":
    sys.exit(cli())
