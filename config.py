"""train.py's flags, openai/glow's names and defaults (the paper's commands run as written, unique prefixes too:
`--n_level 3`; words are accepted for its integer codes), and the one read-only `Config` derived from them.
"""
import argparse
import math
import sys

import kernels
import model as glow_model

PERMUTATION_CODES = {"0": "reverse", "1": "shuffle", "2": "invconv", "3": "invconv_lu"}
COUPLING_CODES = {"0": "additive", "1": "affine"}
GRADIENT_CHECKPOINTING = {"0": "none", "1": "recompute", "2": "invertible"}
TEMPERATURES = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # openai/glow's sample grid


def _coded(codes, what):
    """An argparse type accepting openai/glow's integer code or the word."""
    words = sorted(set(codes.values()))

    def parse(text):
        text = str(text).strip()
        if text in codes or text in words:
            return codes.get(text, text)
        raise argparse.ArgumentTypeError("%s %r: expected one of %s or its code %s" % (
            what, text, ", ".join(words), ", ".join("%s=%s" % kv for kv in sorted(codes.items()))))
    return parse


def build_parser(defaults=True):
    """The flag table. defaults=False: no flag has a default, so parsing
    gives only the flags given (`parse_args`' `given`)."""
    p = argparse.ArgumentParser(
        description="Train Glow (Kingma & Dhariwal 2018) with TF1 graph code on CPU, GPU or Ascend NPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def a(*names, **kwargs):
        if not defaults:
            kwargs["default"] = argparse.SUPPRESS
        p.add_argument(*names, **kwargs)

    # --- openai/glow's flags, names and defaults ---
    a("--verbose", action="store_true", help="print every training step")
    a("--restore_path", default="", help="checkpoint (prefix or folder) to start from instead of the init")
    a("--logdir", default="./logs", help="where logs, checkpoints and samples go")
    a("--problem", default="cifar10", help="data set, see data_loaders.PROBLEMS")
    a("--category", default="", help="LSUN category (a subfolder of --data_dir)")
    a("--data_dir", default="", help="folder with the data files (default: standard places, then download)")
    a("--dal", type=int, default=1, choices=[0, 1, 2], help="data augmentation level: 0 none, 1 random shifts, 2 "
      "shifts, flips, rotation, zoom, shear (openai/glow's); the sub-pixel shifts are bilinear and blur the training "
      "images: training bits/dim is then not comparable with the test's (docs/RESULTS.md)")
    a("--fmap", type=int, default=1, help="(openai/glow's, accepted and ignored: files are read by one thread)")
    a("--pmap", type=int, default=16, help="(openai/glow's, accepted and ignored: decoding is not parallelised)")
    a("--n_train", type=int, default=50000, help="epoch size in images at --anchor_size: ceil(n_train / (n_batch_train"
      " x ranks)) steps from the whole training set (--train_subset); sets the warm-up, beta2 and the Polyak span")
    a("--n_test", type=int, default=-1, help="test images (-1: the whole test set)")
    a("--n_batch_train", type=int, default=64, help="minibatch per rank at --anchor_size")
    a("--n_batch_test", type=int, default=50, help="test minibatch per rank at --anchor_size")
    a("--n_batch_init", type=int, default=256, help="images for data-dependent init at --anchor_size")
    a("--optimizer", default="adamax", choices=["adam", "adamax"])
    a("--lr", type=float, default=0.001, help="base learning rate")
    a("--beta1", type=float, default=0.9, help="Adam beta1")
    a("--polyak_epochs", type=float, default=1, help="averaging horizon in epochs: beta2 = 1 - 1/(its*this)")
    a("--adam_beta2", type=float, default=None, help="Adam's (Adamax's) second-moment decay (default: openai/glow's, "
      "tied to the Polyak span, 1 - 1/(its*polyak_epochs))")
    a("--adam_epsilon", type=float, default=1e-8, help="Adam's epsilon")
    a("--max_grad_norm", type=float, default=0.0, help="clip the gradients (averaged over ranks) to this global norm "
      "(0: off, as openai/glow)")
    a("--max_grad_value", type=float, default=0.0, help="clip each gradient entry to [-v, v] before --max_grad_norm "
      "(0: off, as openai/glow)")
    a("--weight_decay", type=float, default=1.0, help="multiplicative weight decay per step (1.0: off)")
    a("--epochs", type=int, default=1000000, help="epochs to train")
    a("--epochs_warmup", type=float, default=10, help="epochs of linear learning-rate warm-up")
    a("--lr_decay", default="none", choices=["none", "rsqrt"], help="after the warm-up: none (--lr on, as "
      "openai/glow) or rsqrt (--lr x sqrt(warm-up images / images seen): fewer loss spikes, docs/RESULTS.md)")
    a("--epochs_cooldown", type=float, default=0, help="the last epochs of --epochs, over which the rate falls "
      "linearly to 0 (0: none, as openai/glow)")
    a("--epochs_full_valid", type=int, default=50, help="epochs between full test evaluations")
    a("--gradient_checkpointing", type=_coded(GRADIENT_CHECKPOINTING, "gradient_checkpointing"), default="1",
      help="0/none: plain backprop; 1/recompute: recompute each flow step in backprop; 2/invertible: rebuild "
           "activations with the inverse")
    a("--image_size", type=int, default=-1, help="image size (-1: the problem's native size)")
    a("--anchor_size", type=int, default=32, help="image size at which the batch sizes are given")
    a("--width", type=int, default=512, help="channels of the coupling networks")
    a("--depth", type=int, default=32, help="flow steps per level")
    a("--weight_y", type=float, default=0.0, help="weight of the class loss (with --ycond)")
    a("--n_bits_x", type=int, default=8, help="bits per colour channel")
    a("--n_levels", type=int, default=3, help="levels of the multi-scale architecture")
    a("--n_sample", type=int, default=1, help="(openai/glow's, accepted and ignored: see --sample)")
    a("--epochs_full_sample", type=int, default=50, help="epochs between sample grids")
    a("--learntop", action="store_true", help="learn the top prior")
    a("--ycond", action="store_true", help="class-conditional prior")
    a("--seed", type=int, default=0, help="random seed")
    a("--flow_permutation", type=_coded(PERMUTATION_CODES, "flow_permutation"), default="2",
      help="0/reverse, 1/shuffle, 2/invconv, 3/invconv_lu")
    a("--flow_coupling", type=_coded(COUPLING_CODES, "flow_coupling"), default="0", help="0/additive, 1/affine")
    a("--inference", action="store_true", help="encode the test set to logdir/z.npy (and x.npy), then exit")
    # --- the Ascend/ModelArts seed's flags ---
    a("--data_url", default="", help="ModelArts: data location (obs:// or local), copied to a local cache")
    a("--train_url", default="", help="ModelArts: where logs and checkpoints are copied back to")
    # --- ours ---
    a("--lu", action="store_true", help="use the LU-decomposed 1x1 conv (same as --flow_permutation invconv_lu)")
    a("--device", default="cpu", choices=["cpu", "gpu", "npu"], help="where the graph runs")
    a("--backend", default="auto", choices=["auto", "none", "horovod", "hccl"], help="how ranks talk")
    a("--precision_mode", default="allow_fp32_to_fp16", help="Ascend precision mode (--device npu)")
    a("--xla", action="store_true", help="XLA JIT (CPU/GPU)")
    a("--kernels", default="auto", choices=["auto", "plain", "cpu"], help="the coupling networks' convolutions "
      "(kernels.py): plain tf.nn.conv2d or CPU-tuned matmuls (same function); auto: cpu on --device cpu, else plain")
    a("--loop_steps", action="store_true", help="each level's flow steps as a tf.while_loop over stacked variables: "
      "the graph and its memory stop growing with --depth (checkpoints restore either way)")
    a("--loss_scale", default="1", help="loss scaling for reduced precision: a number (1: off) or 'dynamic'")
    a("--resume", action="store_true", help="continue from the latest checkpoint in --logdir")
    a("--save_every", type=int, default=1, help="epochs between checkpoints")
    a("--max_nonfinite", type=int, default=10,
      help="consecutive skipped (non-finite) steps before restoring the last good checkpoint")
    a("--lr_backoff", type=float, default=0.5, help="learning-rate factor applied at each such recovery")
    a("--train_subset", type=int, default=None, help="train on the first N training images only (default: all)")
    a("--n_channels", type=int, default=None, choices=[1, 3], help="MNIST-like problems: 1 (default) or 3 channels")
    a("--evaluate", action="store_true", help="test bits/dim of --restore_path (or the latest checkpoint), then exit")
    a("--n_dequant_draws", type=int, default=1, help="with --evaluate: average over this many noise draws")
    a("--per_image", action="store_true",
      help="with --evaluate: also write every test image's bits/dim to LOGDIR/test_bits_per_image.csv")
    a("--weights", default="raw", choices=["raw", "polyak"], help="the weights best/ is chosen by and --sample and "
      "--inference use: raw (the paper's test figure) or their Polyak average; test lines give both, epoch samples "
      "use the better")
    a("--sample", type=int, default=0, metavar="N", help="write N samples of the checkpoint to a PNG grid, then exit")
    a("--temperature", type=float, default=0.7, help="with --sample")
    a("--export", default="", metavar="DIR", help="write the checkpoint as a SavedModel and frozen graphs to DIR "
      "(export.py; --weights picks raw or Polyak weights), then exit; needs no data")
    a("--export_batch", type=int, default=1, help="with --export: the frozen graphs' static batch")
    a("--tensorboard", action="store_true", help="also write TensorBoard summaries")
    a("--progress_seconds", type=float, default=60, help="within an epoch, when stdout is not a terminal: a progress "
      "line every this many seconds (0: none); on a terminal a progress bar (neither with --verbose)")
    a("--max_steps", type=int, default=0, help="stop after this many training steps in total (0: no limit)")
    return p


def parse_args(argv=None):
    """Parse the command line; unknown arguments are an error except on ModelArts, whose launcher adds its own:
    they are reported (a misspelt flag of ours too) and kept in the config. `given`: the flags given."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not (args.data_url or args.train_url):
        parser.error("unrecognized arguments: %s" % " ".join(unknown))
    if unknown:
        sys.stderr.write("ignoring unknown arguments: %s\n" % " ".join(unknown))
    args.unknown_args = unknown
    args.given = sorted(vars(build_parser(defaults=False).parse_known_args(argv)[0]))
    return args


def _is_loss_scale(text):
    try:
        return text == "dynamic" or (float(text) >= 1 and math.isfinite(float(text)))
    except ValueError:
        return False


# Flags with a range of their own: (flag, test, what is accepted).
_RANGES = [(name, lambda v: v >= 1, "must be >= 1") for name in (
    "n_train", "n_batch_train", "n_batch_test", "n_batch_init", "width", "depth", "n_levels", "epochs",
    "epochs_full_valid", "epochs_full_sample", "anchor_size", "save_every", "max_nonfinite", "n_dequant_draws",
    "export_batch")] + [
    ("lr", lambda v: v > 0 and math.isfinite(v), "must be a positive number"),
    ("beta1", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("weight_decay", lambda v: 0 < v <= 1, "multiplies the weights each step, must be in (0, 1] (1: off)"),
    ("polyak_epochs", lambda v: v > 0 and math.isfinite(v), "must be a number > 0"),
    ("adam_beta2", lambda v: v is None or 0 < v < 1, "must be in (0, 1)"),
    ("adam_epsilon", lambda v: v >= 0 and math.isfinite(v), "must be a number >= 0"),
    ("max_grad_norm", lambda v: v >= 0 and math.isfinite(v), "must be a number >= 0 (0: off)"),
    ("max_grad_value", lambda v: v >= 0 and math.isfinite(v), "must be a number >= 0 (0: off)"),
    ("epochs_warmup", lambda v: v >= 0 and math.isfinite(v), "must be a number >= 0"),
    ("epochs_cooldown", lambda v: v >= 0 and math.isfinite(v), "must be a number >= 0"),
    ("temperature", lambda v: v >= 0 and math.isfinite(v), "must be a number >= 0 (1: the model's own spread)"),
    ("n_test", lambda v: v == -1 or v >= 1, "must be -1 (the whole test set) or >= 1"),
    ("n_bits_x", lambda v: 1 <= v <= 8, "must be in 1..8"),
    ("lr_backoff", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("loss_scale", _is_loss_scale, "must be a number >= 1 or 'dynamic'"),
    ("sample", lambda v: v >= 0, "must be >= 0"),
    ("max_steps", lambda v: v >= 0, "must be >= 0"),
    ("progress_seconds", lambda v: v >= 0 and math.isfinite(v), "must be a number >= 0 (0: no progress lines)")]


def check_args(args):
    """Errors that need no data: impossible values and flag combinations,
    each a ValueError naming the value and what would be accepted."""
    for name, ok, accepted in _RANGES:
        if not ok(getattr(args, name)):
            raise ValueError("--%s %r: %s" % (name, getattr(args, name), accepted))
    size = args.image_size
    modes = [m for m in ("inference", "evaluate", "export") if getattr(args, m)] + (["sample"] if args.sample else [])
    combinations = [
        (args.lu and args.flow_permutation not in ("invconv", "invconv_lu"),
         "--lu with --flow_permutation %s: --lu selects the LU-decomposed 1x1 conv" % args.flow_permutation),
        (size != -1 and (size < 2 or size & (size - 1)),
         "--image_size %d: must be a power of two (e.g. 32), or -1 for the problem's size" % size),
        (size != -1 and size < 2 ** args.n_levels, "--image_size %d is too small for --n_levels %d: needs at least %d"
         % (size, args.n_levels, 2 ** args.n_levels)),
        (args.weight_y > 0 and not args.ycond,
         "--weight_y %r needs --ycond (the class loss reads the class-conditional prior)" % args.weight_y),
        (args.resume and args.restore_path,
         "--resume and --restore_path: --resume continues --logdir's own run; pick one"),
        (len(modes) > 1, "--%s: pick one mode" % " and --".join(modes)),
        (args.lr_decay == "rsqrt" and args.epochs_warmup == 0,
         "--lr_decay rsqrt with --epochs_warmup 0: the decay is counted in warm-ups; give --epochs_warmup > 0"),
        (args.epochs_cooldown > args.epochs,
         "--epochs_cooldown %r is longer than the run (--epochs %d)" % (args.epochs_cooldown, args.epochs)),
        (args.device == "npu" and args.xla, "--xla with --device npu: the NPU compiles graphs itself; drop --xla"),
        (args.per_image and not args.evaluate, "--per_image writes --evaluate's per-image figures: add --evaluate")]
    for failed, message in combinations:
        if failed:
            raise ValueError(message)


class Config(object):
    """A run's settings: every flag and what `derive_config` derived, read
    as attributes; read-only once built."""

    def __init__(self, fields):
        self.__dict__.update(fields)

    def __setattr__(self, name, value):
        raise AttributeError("config is read-only: cannot set %s (derive_config sets everything once)" % name)

    def as_dict(self):
        return dict(self.__dict__)


# The flags behind the model's ARCHITECTURE fields (model.py, the one declaration), each with the field of a run's
# saved config (checkpoints.saved_config) it is checked against: a field is set by the flag of its name, but for
# openai/glow's names of two and the image shape, which the data gives at --image_size with --n_channels (n_y is the
# --problem's, adopted with it).
_FLAGS_OF_FIELD = {"permutation": ("flow_permutation",), "coupling": ("flow_coupling",),
                   "image_shape": ("image_size", "n_channels"), "n_y": ()}
MODEL_FLAGS = tuple((flag, field if flag.startswith("flow_") else flag)
                    for field in glow_model.ARCHITECTURE for flag in _FLAGS_OF_FIELD.get(field, (field,)))
# The training recipe: a resumed run keeps its run's unless given, and a mode records its run's in its config line.
RECIPE_FLAGS = ("optimizer", "lr", "beta1", "adam_beta2", "adam_epsilon", "polyak_epochs", "max_grad_norm",
                "max_grad_value", "weight_decay", "epochs_warmup", "lr_decay", "epochs_cooldown", "n_train",
                "train_subset", "n_batch_train", "n_batch_init", "anchor_size", "dal", "seed", "gradient_checkpointing",
                "loop_steps", "loss_scale", "lr_backoff", "max_nonfinite", "save_every", "epochs_full_valid",
                "epochs_full_sample")
# What a resumed run keeps besides: its test set and batch, and the weights its best/ is chosen by. Any other flag
# (where and how it runs, how long, what it prints) is the command line's.
RESUME_FLAGS = RECIPE_FLAGS + ("n_test", "n_batch_test", "weights")


def adopt_run(args, saved, source):
    """A new args with the model flags (and the problem, unless given) of a run's saved config, for --resume,
    --restore_path and the modes: they rebuild the model with no model flag. A model flag given that contradicts
    the run is a ValueError naming both values. Unless given, --resume keeps the run's RESUME_FLAGS and a mode its
    RECIPE_FLAGS (recorded in its config line); --restore_path starts a new recipe. `source` names the run."""
    given, values = set(args.given), dict(vars(args))
    for flag, field in MODEL_FLAGS:
        ours = "invconv_lu" if flag == "flow_permutation" and args.lu else getattr(args, flag)
        if flag in given or (flag == "flow_permutation" and "lu" in given):
            if ours != saved.get(field) and not (flag == "image_size" and ours == -1):
                raise ValueError("--%s %s contradicts the run's --%s %s (%s); drop the flag"
                                 % (flag, ours, flag, saved.get(field), source))
        values[flag] = saved.get(field, values[flag])
    values["lu"] = False
    mode = args.inference or args.evaluate or args.sample
    adopted = ("problem", "category") + (RESUME_FLAGS if args.resume else RECIPE_FLAGS if mode else ())
    values.update((flag, saved[flag]) for flag in adopted if flag not in given and flag in saved)
    return argparse.Namespace(**values)


def derive_config(args, image_shape, n_y, n_train, n_test, n_ranks, **settled):
    """One validated, read-only Config from the flags, the data's facts (n_train, n_test: the images of its splits),
    the ranks and what the program `settled` before (e.g. logdir, made absolute; these replace the flags'). An
    epoch is openai/glow's: ceil(--n_train / (--n_batch_train x ranks)) steps of the streamed data, whatever its
    size; n_processed counts --anchor_size images.

    Batch sizes are given at --anchor_size and scaled by the pixel count, so memory per step stays about the same
    (openai/glow's lookup table raised KeyError off its sizes; any size that leaves one image works)."""
    check_args(args)
    image_size = image_shape[0]
    if image_size % 2 ** args.n_levels:
        raise ValueError("image size %d with --n_levels %d: must be divisible by %d"
                         % (image_size, args.n_levels, 2 ** args.n_levels))
    if args.ycond and n_y < 2:
        raise ValueError("--ycond on --problem %s: it has no class labels (n_y = %d)" % (args.problem, n_y))
    scale = float(args.anchor_size ** 2) / (image_size * image_size)
    batch = dict((name, int(getattr(args, "n_batch_" + name) * scale)) for name in ("train", "test", "init"))
    for name in ("train", "init"):
        if batch[name] < 1:
            raise ValueError("--n_batch_%s %d at --anchor_size %d is less than one %dx%d image per rank; raise it"
                             % (name, getattr(args, "n_batch_" + name), args.anchor_size, image_size, image_size))
    if n_train // n_ranks < batch["train"]:
        raise ValueError("%d training images over %d rank(s) give %d per rank, fewer than one batch of %d "
                         "(--n_batch_train %d at --anchor_size %d, for %d px images)"
                         % (n_train, n_ranks, n_train // n_ranks, batch["train"], args.n_batch_train, args.anchor_size,
                            image_size))
    train_its = -(-args.n_train // (args.n_batch_train * n_ranks))
    if train_its * args.polyak_epochs <= 1:
        raise ValueError("%d step(s) per epoch x --polyak_epochs %g: beta2 = 1 - 1/(steps*polyak_epochs) needs "
                         "more than one step to average over; use more data or a larger --polyak_epochs"
                         % (train_its, args.polyak_epochs))
    cfg = dict(vars(args), **settled)
    cfg.update(local_batch_train=batch["train"], local_batch_init=batch["init"],
               # At least one test image: it changes no result (openai/glow took 1
               # at 256 px, where the paper's CelebA command gives 50 x 32^2/256^2 < 1).
               local_batch_test=max(1, batch["test"]), images_per_step=batch["train"] * n_ranks)
    cfg.update(
        ignored_args=cfg.pop("unknown_args", None) or [], image_size=image_size, image_shape=list(image_shape),
        n_y=n_y, n_train_images=n_train, n_test=n_test, n_ranks=n_ranks, train_its=train_its,
        # Plain 1x1 convs need float64 determinants and inverses, which the NPU does not run: there the LU form is used.
        permutation="invconv_lu" if args.lu or (args.device == "npu" and args.flow_permutation == "invconv")
        else args.flow_permutation,
        coupling=args.flow_coupling, kernels=kernels.for_device(args.device, args.kernels),
        # openai/glow: beta2 (Adam's second moment and the Polyak average) averages over polyak_epochs epochs;
        # --adam_beta2 unties Adam's.
        polyak_decay=1.0 - 1.0 / (train_its * args.polyak_epochs),
        beta2=args.adam_beta2 or 1.0 - 1.0 / (train_its * args.polyak_epochs),
        # openai/glow's n_processed: images at --anchor_size, the unit of --n_train.
        anchor_images_per_step=args.n_batch_train * n_ranks)
    for raw in ("flow_permutation", "flow_coupling", "lu"):  # their effect is `permutation` and `coupling`
        del cfg[raw]
    return Config(cfg)


def lr_at(cfg, n_processed):
    """openai/glow's linear warm-up from 0 over epochs_warmup epochs, by images seen; after it --lr, or with
    --lr_decay rsqrt, --lr x sqrt(warm-up images / images seen); times, over the last epochs_cooldown epochs of
    --epochs, the share of their images still to come (a linear fall to 0 at the end: the last step's rate is
    1/(its steps) of the schedule's)."""
    epoch = cfg.train_its * cfg.anchor_images_per_step  # images counted in an epoch (n_processed's units)
    warmup, end, cooldown = cfg.n_train * cfg.epochs_warmup, epoch * cfg.epochs, epoch * cfg.epochs_cooldown
    left = min(1.0, max(0.0, end - n_processed) / cooldown) if cooldown else 1.0
    if n_processed < warmup:
        return cfg.lr * (n_processed / warmup) * left
    return cfg.lr * ((warmup / n_processed) ** 0.5 if cfg.lr_decay == "rsqrt" else 1.0) * left


def is_eval_epoch(cfg, epoch):
    """The epochs openai/glow reported on (1-9, every 10th to 50, every epochs_full_valid), plus the last; it ran
    the test set only at every epochs_full_valid-th, this at each (a test curve from the start)."""
    return epoch < 10 or (epoch < 50 and epoch % 10 == 0) or epoch % cfg.epochs_full_valid == 0 or epoch == cfg.epochs


def is_sample_epoch(cfg, epoch):
    """openai/glow's schedule (epochs 1 and 10, every epochs_full_sample), plus the last epoch."""
    return epoch in (1, 10) or epoch % cfg.epochs_full_sample == 0 or epoch == cfg.epochs
