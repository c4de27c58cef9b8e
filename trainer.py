"""The graphs of a training run and the session that runs them (train.py: the loop): a model's graphs
(evaluator.Evaluator) plus data-dependent init and the training step."""
import os

import tensorflow.compat.v1 as tf

import checkpoints
import evaluator
import looped
import memory_saving_gradients
import optim
import utils

class Trainer(evaluator.Evaluator):
    """Every graph a run needs, built once on one set of weights (cfg: a config.Config): the Evaluator's, plus
    data-dependent init and the training step (gradients averaged over ranks, Adam/Adamax, the Polyak average
    updated, skipped when not finite); the graph is final once built."""

    def _build(self):
        cfg, backend = self.cfg, self.backend
        self.x_init, self.y_init = self._inputs("init", cfg.local_batch_init)
        self.x, self.y = self._inputs("train", cfg.local_batch_train)
        self.grad_norm, self.stop_agreed = float("nan"), False  # of the last step (train_step)
        self._build_inputs()  # the evaluation's, created here as before this class had a base: the same op seeds
        self.init_loss = self.glow.init_op(self.x_init, self.y_init)
        self._build_train_step()
        self._build_evaluation()
        self.checkpoints = checkpoints.Checkpoints(utils.dumps_strict(cfg.as_dict(), "config"))
        float_vars = [v for v in tf.global_variables() if v.dtype.base_dtype.is_floating]
        self.all_finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.is_finite(v)) for v in float_vars]))
        # Not the run/ strings: each rank's config names its own --logdir, and only rank 0 saves them.
        self.broadcast = backend.broadcast_variables([v for v in tf.global_variables()
                                                      if v.dtype.base_dtype != tf.string])
        self.global_init = tf.global_variables_initializer()
        self._build_sampling()
        self._build_decoding()
        self.graph.finalize()

    def _build_train_step(self):
        """Gradients of the mean loss (with the configured memory saving), averaged over ranks, one optimizer
        update. The loss scale (NPU mixed precision) multiplies the loss before backprop and divides the
        gradients after, so that small gradients survive float16."""
        cfg = self.cfg
        self.lr = tf.placeholder(tf.float32, [], name="lr")
        self.loss_scale = tf.placeholder_with_default(tf.constant(1.0), [], name="loss_scale")
        # The training loss's level runner: its gradients take --gradient_checkpointing's memory-saving path.
        run_steps = (looped.looped_steps if cfg.loop_steps else memory_saving_gradients.checkpointed_steps)(
            cfg.gradient_checkpointing)
        stats = self.glow.with_steps(run_steps).losses(self.x, self.y)
        loss = tf.reduce_mean(stats["loss"])
        params = tf.trainable_variables()
        grads = memory_saving_gradients.gradients(loss * self.loss_scale, params, mode=cfg.gradient_checkpointing)
        grads = self.backend.allreduce_mean([None if g is None else g / self.loss_scale for g in grads])
        self.opt = optim.make_train_op(cfg.optimizer, params, grads, self.lr, cfg.beta1, cfg.beta2,
                                       weight_decay=cfg.weight_decay, epsilon=cfg.adam_epsilon, loss=loss,
                                       ema=self.ema, max_grad_value=cfg.max_grad_value,
                                       max_grad_norm=cfg.max_grad_norm)
        self.seed_average = self.ema.seed_op
        self.train_stats = self.backend.allreduce_mean(tf.stack([tf.reduce_mean(stats[k])
                                                                 for k in evaluator.STATS]))
        # A stop asked for on any rank (a signal), known to every rank after the same step: > 0.
        self.stop_in = tf.placeholder_with_default(tf.constant(0.0), [], name="stop_in")
        self.stop_any = self.backend.allreduce_mean(self.stop_in)

    def initialize(self, x_init, y_init):
        """Fresh weights: initialisers, data-dependent init on a batch per rank,
        rank 0's weights (and init statistics) to all, the Polyak average seeded."""
        self.sess.run(self.global_init)
        self.sess.run(self.init_loss, {self.x_init: x_init, self.y_init: y_init})
        self.sess.run(self.broadcast)
        self.sess.run(self.seed_average)

    def restore(self, path):
        """Restore a checkpoint (a prefix or a folder holding one) on all ranks
        as on rank 0. Returns (its prefix, its RunState)."""
        prefix = checkpoints.resolve(path) if os.path.isdir(path) else path  # (a prefix: resolved by the caller)
        if not any(optim.is_state(key) for key in tf.train.load_checkpoint(prefix).get_variable_to_shape_map()):
            raise ValueError("checkpoint %s holds no optimizer state (a model packed for use, scripts/pack_run.py): "
                             "evaluate, sample or export it; training from it needs the run's own checkpoint" % prefix)
        self.sess.run(self.global_init)
        state = self.checkpoints.restore(self.sess, prefix)
        self.sess.run(self.broadcast)
        return prefix, state

    def save(self, logdir, state, best=False):
        """A checkpoint with `state` (a RunState); its prefix, or None: weights
        that are not finite are never written."""
        if not self.sess.run(self.all_finite):
            return None
        return self.checkpoints.save(self.sess, logdir, state, best)

    def train_step(self, x, y, lr, loss_scale=1.0, stop=False):
        """One step at learning rate `lr`. Returns (applied, the batch's means {name in STATS: float});
        `grad_norm` is then the
        step's gradient norm (before clipping), and `stop_agreed` whether this rank or another asked to stop
        (`stop`) at this step: the same on every rank."""
        self.grad_norm, self.stop_agreed = float("nan"), bool(stop)  # until this step's are known
        _, applied, stats, self.grad_norm, stop_any = self.sess.run(
            [self.opt.train_op, self.opt.grads_finite, self.train_stats, self.opt.grad_norm, self.stop_any],
            {self.x: x, self.y: y, self.lr: lr, self.loss_scale: loss_scale, self.stop_in: float(stop)})
        self.stop_agreed = bool(stop_any > 0)
        return bool(applied), dict(zip(evaluator.STATS, stats.tolist()))

    def agree_stop(self, stop):
        """Whether any rank asks to stop (`stop`: this rank's wish), the same answer on every rank; every rank
        must call it at the same point."""
        return bool(self.sess.run(self.stop_any, {self.stop_in: float(stop)}) > 0)

    def n_skipped(self):
        return int(self.sess.run(self.opt.n_skipped))


class LossScale(object):
    """--loss_scale: fixed, or dynamic (2**15 at first, halved at a non-finite
    step, doubled after `period` finite ones); the RunState holds its value."""

    def __init__(self, setting, period=2000):
        self.dynamic, self.period, self._good = setting == "dynamic", period, 0
        self.fixed = None if self.dynamic else float(setting)

    def start(self, state, restored):
        """state.loss_scale at a run's start: a dynamic one continues a restored state."""
        if not (self.dynamic and restored):
            state.loss_scale = 2.0 ** 15 if self.dynamic else self.fixed

    def update(self, state, applied):
        """After a step: True when the scale explains a skipped step (it was lowered), which then is no failure."""
        self._good = self._good + 1 if applied else 0
        if self.dynamic and applied and self._good % self.period == 0:
            state.loss_scale *= 2.0
        lowered = self.dynamic and not applied and state.loss_scale > 1.0
        if lowered:
            state.loss_scale /= 2.0
        return lowered
