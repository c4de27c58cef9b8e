"""config.py: openai/glow's README commands parse as written, words and
codes are both accepted, and impossible combinations are clear errors."""
import shlex

import pytest

import config

PAPER_COMMANDS = [
    "--depth 1",
    "--problem cifar10 --image_size 32 --n_level 3 --depth 32 --flow_permutation 0 --flow_coupling 0 "
    "--seed 0 --learntop --lr 0.001",
    "--problem cifar10 --image_size 32 --n_level 3 --depth 32 --flow_permutation 2 --flow_coupling 1 "
    "--seed 0 --learntop --lr 0.001 --n_bits_x 8",
    "--problem imagenet-oord --image_size 64 --n_level 4 --depth 48 --flow_permutation 2 --flow_coupling 1 "
    "--seed 0 --learntop --lr 0.001 --n_bits_x 8",
    "--problem lsun_realnvp --category bedroom --image_size 64 --n_level 3 --depth 48 --flow_permutation 2 "
    "--flow_coupling 1 --seed 0 --learntop --lr 0.001 --n_bits_x 8",
    "--problem celeba --image_size 256 --n_level 6 --depth 32 --flow_permutation 2 --flow_coupling 0 --seed 0 "
    "--learntop --lr 0.001 --n_bits_x 5",
    "--problem cifar10 --image_size 32 --n_level 3 --depth 32 --flow_permutation 2 --flow_coupling 0 --seed 0 "
    "--learntop --lr 0.001 --n_bits_x 5 --ycond --weight_y=0.01",
]


@pytest.mark.parametrize("command", PAPER_COMMANDS)
def test_paper_commands_parse_and_check(command):
    args = config.parse_args(shlex.split(command))
    config.check_args(args)
    assert args.unknown_args == []


def test_defaults_are_openai_glows():
    a = config.parse_args([])
    assert (a.problem, a.n_batch_train, a.n_batch_init, a.optimizer, a.lr, a.beta1, a.polyak_epochs,
            a.weight_decay, a.epochs_warmup, a.epochs_full_valid, a.width, a.depth, a.n_levels, a.n_bits_x,
            a.flow_permutation, a.flow_coupling, a.gradient_checkpointing, a.anchor_size, a.dal) == (
        "cifar10", 64, 256, "adamax", 0.001, 0.9, 1, 1.0, 10, 50, 512, 32, 3, 8, "invconv", "additive",
        "recompute", 32, 1)
    # ours, off: openai/glow's Adam (beta2 tied to the Polyak span), no clipping, no decay after the warm-up, no
    # cool-down at the end
    assert (a.adam_beta2, a.max_grad_norm, a.max_grad_value, a.lr_decay, a.epochs_cooldown) == (
        None, 0.0, 0.0, "none", 0)


def test_words_and_codes():
    a = config.parse_args(["--flow_permutation", "invconv_lu", "--flow_coupling", "1"])
    assert (a.flow_permutation, a.flow_coupling) == ("invconv_lu", "affine")
    cfg = config.derive_config(config.parse_args(["--lu"]), (32, 32, 3), 10, 50000, 10000, 1)
    assert cfg.permutation == "invconv_lu"


@pytest.mark.parametrize("batch", [1, 3, 7, 48, 100])
def test_any_batch_size_works(batch):
    """openai/glow raised KeyError for batch sizes outside its table."""
    cfg = config.derive_config(config.parse_args(["--n_batch_train", str(batch)]), (32, 32, 3), 10, 50000,
                               10000, 2)
    assert cfg.local_batch_train == batch and cfg.train_its == -(-50000 // (2 * batch))
    assert 0 < cfg.beta2 < 1


# Each paper command's problem: (image shape, classes, training and test images).
PAPER_DATA = {"cifar10": ((32, 32, 3), 10, 50000, 10000), "imagenet-oord": ((64, 64, 3), 1000, 1281149, 49999),
              "lsun_realnvp": ((64, 64, 3), 1, 3033042, 300), "celeba": ((256, 256, 3), 1, 27000, 3000)}


@pytest.mark.parametrize("command", PAPER_COMMANDS[1:])
@pytest.mark.parametrize("n_ranks", [1, 8])
def test_paper_commands_derive_openai_glows_epoch(command, n_ranks):
    """An epoch is --n_train (50,000) images at --anchor_size whatever the data
    set's size: ceil(50000 / (64 x ranks)) steps, which also sets beta2 and the
    Polyak average's span; n_processed counts anchor-size images. The CelebA
    command runs (openai/glow took a test batch of 1 at 256 px)."""
    args = config.parse_args(shlex.split(command))
    shape, n_y, n_train, n_test = PAPER_DATA[args.problem]
    cfg = config.derive_config(args, shape, n_y, n_train, n_test, n_ranks)
    assert cfg.train_its == {1: 782, 8: 98}[n_ranks]
    assert cfg.beta2 == pytest.approx(1 - 1.0 / cfg.train_its)
    assert cfg.anchor_images_per_step == 64 * n_ranks
    assert cfg.images_per_step == cfg.local_batch_train * n_ranks
    assert cfg.local_batch_train == 64 * 32 ** 2 // shape[0] ** 2 and cfg.local_batch_test >= 1
    # the warm-up ends after --epochs_warmup (10) epochs of anchor-size images
    assert config.lr_at(cfg, 10 * 50000) == pytest.approx(args.lr)
    assert config.lr_at(cfg, 5 * 50000) == pytest.approx(args.lr / 2)
    assert config.lr_at(cfg, 100 * 50000) == args.lr  # openai/glow's rate after it: no decay


def test_rsqrt_decay_follows_the_warm_up():
    """--lr_decay rsqrt: the warm-up's linear rise, then lr x sqrt(warm-up images / images seen), continuous at the
    warm-up's end; it needs a warm-up to count in."""
    args = config.parse_args(["--lr", "0.002", "--epochs_warmup", "2", "--lr_decay", "rsqrt"])
    cfg = config.derive_config(args, (32, 32, 1), 10, 50000, 10000, 1)
    warmup = 2 * 50000
    # rel 1e-12: one float64 formula against decimal constants, a few roundings of 1.1e-16 each (seen: equal)
    for n, want in ((0, 0.0), (warmup / 4, 0.0005), (warmup, 0.002), (4 * warmup, 0.001), (100 * warmup, 0.0002)):
        assert config.lr_at(cfg, n) == pytest.approx(want, rel=1e-12), n
    with pytest.raises(ValueError, match="--lr_decay rsqrt with --epochs_warmup 0"):
        config.check_args(config.parse_args(["--lr_decay", "rsqrt", "--epochs_warmup", "0"]))


def test_cooldown_falls_linearly_to_zero_over_the_last_epochs():
    """--epochs_cooldown 2 of --epochs 10: the schedule's rate until the last two epochs' images, then that rate times
    the share of them still to come (half way: half; the last step: one step's share; the end: 0), whatever the
    schedule (here the rsqrt decay); longer than the run is refused."""
    args = config.parse_args(["--lr", "0.002", "--epochs", "10", "--epochs_warmup", "1", "--epochs_cooldown", "2",
                              "--lr_decay", "rsqrt", "--n_batch_train", "64"])
    cfg = config.derive_config(args, (32, 32, 1), 10, 50000, 10000, 1)
    epoch = cfg.train_its * 64  # 782 steps of 64 images

    def rsqrt(n):
        return 0.002 * (50000.0 / n) ** 0.5

    # rel 1e-12: one float64 formula against the same formula in another order, a few roundings of 1.1e-16 (seen: equal)
    for n, want in ((25000, 0.001), (8 * epoch, rsqrt(8 * epoch)), (9 * epoch, rsqrt(9 * epoch) / 2),
                    (10 * epoch - 64, rsqrt(10 * epoch - 64) * 64 / (2 * epoch)), (10 * epoch, 0.0)):
        assert config.lr_at(cfg, n) == pytest.approx(want, rel=1e-12), n
    assert config.lr_at(cfg, 8 * epoch - 64) == config.lr_at(config.derive_config(config.parse_args(
        ["--lr", "0.002", "--epochs", "10", "--epochs_warmup", "1", "--lr_decay", "rsqrt"]), (32, 32, 1), 10, 50000,
        10000, 1), 8 * epoch - 64)  # before the cool-down: the schedule's rate itself
    with pytest.raises(ValueError, match="--epochs_cooldown 12.0 is longer than the run"):
        config.check_args(config.parse_args(["--epochs", "10", "--epochs_cooldown", "12"]))


def test_epoch_size_needs_a_batch_per_rank_of_data():
    args = config.parse_args(["--n_batch_train", "64"])
    cfg = config.derive_config(args, (32, 32, 3), 10, 128, 10, 2)  # 64 images per rank: one batch
    assert cfg.train_its == 391 and cfg.n_train_images == 128
    with pytest.raises(ValueError, match=r"127 training images over 2 rank\(s\) give 63 per rank, fewer than one "
                                         r"batch of 64 \(--n_batch_train 64 at --anchor_size 32, for 32 px"):
        config.derive_config(args, (32, 32, 3), 10, 127, 10, 2)
    with pytest.raises(ValueError, match="--n_train 0: must be >= 1"):
        config.derive_config(config.parse_args(["--n_train", "0"]), (32, 32, 3), 10, 50000, 10, 1)


def test_batch_scaling_by_anchor_size():
    cfg = config.derive_config(config.parse_args(["--problem", "imagenet-oord", "--n_levels", "4"]),
                               (64, 64, 3), 1000, 1281152, 50000, 8)
    assert (cfg.local_batch_train, cfg.local_batch_init) == (16, 64)


@pytest.mark.parametrize("flags,shape,message", [
    (["--n_batch_train", "2"], (256, 256, 3), "less than one 256x256 image"),
    (["--n_levels", "6"], (32, 32, 1), "image size 32 with --n_levels 6"),
    (["--ycond"], (32, 32, 1), "--ycond on --problem cifar10: it has no class labels"),
    (["--beta1", "1.0"], (32, 32, 1), "--beta1 1.0"),
    (["--weight_decay", "0"], (32, 32, 1), "--weight_decay 0"),
    (["--sample", "4", "--inference"], (32, 32, 1), "pick one mode"),
    (["--epochs_full_sample", "0"], (32, 32, 1), "--epochs_full_sample 0: must be >= 1"),
    (["--epochs_full_valid", "-1"], (32, 32, 1), "--epochs_full_valid -1: must be >= 1"),
    (["--polyak_epochs", "nan"], (32, 32, 1), "--polyak_epochs nan: must be a number > 0"),
    (["--temperature", "-1"], (32, 32, 1), "--temperature -1.0: must be a number >= 0"),
    (["--n_test", "-5"], (32, 32, 1), "--n_test -5: must be -1"),
    (["--progress_seconds", "-1"], (32, 32, 1), "--progress_seconds -1.0: must be a number >= 0"),
])
def test_impossible_configs_name_the_value(flags, shape, message):
    n_y = 1 if "--ycond" in flags else 10
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        config.derive_config(config.parse_args(flags), shape, n_y, 50000, 10000, 1)


def test_unknown_flags_rejected_except_on_modelarts(capsys):
    with pytest.raises(SystemExit):
        config.parse_args(["--no_such_flag", "1"])
    assert "unrecognized arguments: --no_such_flag" in capsys.readouterr().err
    a = config.parse_args(["--data_url", "obs://b/d", "--init_method", "tcp://x"])
    assert a.unknown_args == ["--init_method", "tcp://x"]


def test_warmup_and_schedules():
    cfg = config.derive_config(config.parse_args(["--epochs", "120"]), (32, 32, 3), 10, 50000, 10000, 1)
    assert config.lr_at(cfg, 0) == 0.0
    assert config.lr_at(cfg, 250000) == pytest.approx(0.0005)
    assert config.lr_at(cfg, 10 ** 7) == 0.001
    assert [e for e in range(1, 121) if config.is_eval_epoch(cfg, e)] == \
        list(range(1, 10)) + [10, 20, 30, 40, 50, 100, 120]
    assert [e for e in range(1, 121) if config.is_sample_epoch(cfg, e)] == [1, 10, 50, 100, 120]
