"""Adam / Adamax with Polyak averaging, as in openai/glow's optim.py.

The update equations are openai/glow's (Kingma & Dhariwal 2018, which trains
with Adam, Kingma & Ba 2015, and evaluates Polyak-averaged weights):

    t starts at 1 and counts applied steps
    alpha_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)     (1 - beta1^t := 1 if beta1 == 0)
    m1      = beta1*m1 + (1 - beta1)*g                  (beta1 == 0: m1 = g)
    Adam:   m2 = beta2*m2 + (1 - beta2)*g^2,  delta = m1 / (sqrt(m2) + eps)
    Adamax: m2 = max(beta2*m2, |g|),          delta = m1 / (m2 + eps)
    w       = weight_decay*w - alpha_t*delta            (weight_decay is a factor; 1.0 = off)
    ema     = decay*ema + (1 - decay)*w                 (decay defaults to beta2)

Adamax keeps glow's sqrt(1 - beta2^t) factor in alpha_t although Kingma &
Ba's Adamax (Algorithm 2) has none: this is a port, the numbers must match.

Where this port deliberately differs from the original, and why:
  * The caller passes beta2 (glow: 1 - 1/(train_its*polyak_epochs)) and
    already all-reduced gradients: this module reads no config and no ranks.
  * One step is a single session call: a step whose gradients (or loss) are
    not finite changes no weight, moment, t or average, and only counts itself
    in `n_skipped`. One NaN batch used to poison the Adam moments for good.
  * The average is taken of the weights *after* this step's update. glow
    grouped the average op beside the updates with no ordering, so it read
    old or new weights at the scheduler's whim.
  * glow used tf.train.ExponentialMovingAverage(zero_debias=True). For
    variables TF ignores zero_debias: the shadow starts at the variable's
    initial value, not at zero, so there was never a bias to remove. Here the
    average also starts at the initial value, and `seed_op` (run after the
    data-dependent init) copies the initialised weights into it, so the
    average is an unbiased mean of real weights from step 0: no debiasing.
  * glow's `tf.Variable(zeros, w.name + '_adam_m2')` passed the name as the
    `trainable` argument, so its state variables were unnamed and trainable.
    Here every state variable is non-trainable and named
    `<scope>/<param op name>/{m1,m2,ema}`, `<scope>/t`, `<scope>/n_skipped`:
    names are checkpoint keys.
  * One fused TF kernel per param (ResourceApplyAdam / ResourceApplyAdaMax,
    the same equations) updates the weight and both moments in place, and
    one more moves its average. glow built each new value as a new tensor:
    copies of every weight and moment that all wait for the skip decision
    (which needs every gradient). The kernels also mean few ops per param;
    every op costs memory in the graph and in each session that holds it
    (docs/BENCHMARKS.md), and the paper's model has about 1,200 params.
    With beta1 = 0 the kernels still keep an m1 slot (glow had none).
"""
import collections
import math

import tensorflow.compat.v1 as tf

import tfops

OPTIMIZERS = ("adam", "adamax")

TrainOp = collections.namedtuple(
    "TrainOp", ["train_op", "step", "slots", "n_skipped", "grads_finite", "ema"])
TrainOp.__doc__ = """What `make_train_op` built.

train_op: run once per step (updates, Polyak average and skip counting).
step: float32 variable t, the number of the next step (starts at 1; exact
    up to 2**24 steps). It only advances on applied steps.
slots: every variable the optimizer created (t, n_skipped, moments, averages),
    for initialising and checkpointing.
n_skipped: int64 variable, steps skipped for a non-finite gradient or loss.
grads_finite: bool scalar, whether this step's gradients (and loss) are finite.
ema: the `Polyak` average of the params (run `ema.seed_op` after init).
"""


def _check_unit_interval(what, value, low_open=False):
    """Raise ValueError naming `what` unless value is a number in [0, 1) (or (0, 1))."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("%s=%r: must be a Python number in %s0, 1)"
                         % (what, value, "(" if low_open else "["))
    if not ((0.0 < value if low_open else 0.0 <= value) and value < 1.0):
        raise ValueError("%s=%r: must be in %s0, 1)" % (what, value, "(" if low_open else "["))


def _check_params(params):
    """Resource variables with a known shape, each once. Returns a list."""
    params = list(params)
    if not params:
        raise ValueError("params is empty: nothing to optimise")
    seen = set()
    for p in params:
        # Duck-typed: TF 2.x resource variables are not tf.compat.v1.Variable instances.
        if not (hasattr(p, "assign") and hasattr(p, "op") and hasattr(p, "read_value")):
            raise ValueError("params: %r is not a variable" % (p,))
        # A ref variable (VariableV2) is read when its consumer runs, not when
        # the read op runs, so update order would differ between TF 1.15 and 2.x.
        if p.op.type != "VarHandleOp":
            raise ValueError("param %s is a %s, not a resource variable: create it with "
                             "use_resource=True" % (p.name, p.op.type))
        if not p.get_shape().is_fully_defined():
            raise ValueError("param %s has shape %s: the optimizer needs a fully defined shape"
                             % (p.name, p.get_shape()))
        if p.name in seen:
            raise ValueError("param %s appears twice in params" % p.name)
        seen.add(p.name)
    return params


def _slot(param, suffix, initializer, dtype=None):
    """Non-trainable resource variable `<scope>/<param op name>/<suffix>`."""
    shape = None if tf.is_tensor(initializer) else param.get_shape()
    return tf.get_variable(
        "%s/%s" % (param.op.name, suffix), shape=shape,
        dtype=dtype or param.dtype.base_dtype, initializer=initializer,
        trainable=False, use_resource=True)


def _on(apply, dtype):
    """1 where the bool scalar `apply` is true (or None), else 0, as `dtype`."""
    return tf.constant(1.0, dtype) if apply is None else tf.cast(apply, dtype)


def _blend(apply, value, off_value, dtype):
    """`value` where the bool scalar `apply` is true (or None), else `off_value`."""
    on = _on(apply, dtype)
    return on * tf.constant(value, dtype) + (1.0 - on) * tf.constant(off_value, dtype)


class Polyak(object):
    """Exponential moving average of params (Polyak & Juditsky 1992).

    Build with `polyak(params, decay)`. Attributes:
      params, variables: the params and their averages, in the same order.
      apply: op `avg := decay*avg + (1 - decay)*param` for every param, reading
        the params when it runs; built on first use. `make_train_op` does not
        use it: it builds its own update from the new weights inside its step.
      seed_op: op `avg := param`. Run it once after initialisation (and after
        the data-dependent init), so the average starts at the weights the
        model actually starts from.
    """

    def __init__(self, params, decay, scope="optim"):
        self.params = _check_params(params)
        _check_unit_interval("decay", decay)
        self.decay = float(decay)
        self._by_name = {}
        self.variables = []
        with tf.variable_scope(scope):
            for p in self.params:
                # Start at the param's initial value, not zeros: the same tensor
                # feeds both initialisers in one global_variables_initializer
                # run, so an average nobody seeds still starts at real weights
                # (what tf.train.ExponentialMovingAverage does for variables).
                avg = _slot(p, "ema", p.initial_value)
                self.variables.append(avg)
                self._by_name[p.name] = avg
        with tf.name_scope("polyak_seed"):
            self.seed_op = tf.group(*[a.assign(p.value(), read_value=False)
                                      for p, a in zip(self.params, self.variables)])
        self._apply = None

    @property
    def apply(self):
        if self._apply is None:
            with tf.name_scope("polyak_apply"):
                self._apply = self.update([p.read_value() for p in self.params])
        return self._apply

    def update(self, values, apply=None):
        """Op moving every average towards `values` (tensors aligned with params).

        Built in the caller's context, so the caller decides when it runs and
        which weights it sees. With a bool scalar tensor `apply`, the averages
        keep their values when it is false.
        """
        values = list(values)
        if len(values) != len(self.params):
            raise ValueError("Polyak.update: got %d values for %d params"
                             % (len(values), len(self.params)))
        # In place: avg -= (1 - decay) * (avg - value), which is
        # decay*avg + (1 - decay)*value, with a rate of 0 on a skipped step.
        # A fused kernel writes the average's buffer: no new copy of every
        # weight waits for the step's skip decision (docs/BENCHMARKS.md).
        ops = []
        rates = {}  # per dtype: (1 - decay), or 0 where apply is false
        for avg, v in zip(self.variables, values):
            dtype = avg.dtype.base_dtype
            if dtype not in rates:
                rates[dtype] = tf.constant(1.0 - self.decay, dtype) * _on(apply, dtype)
            ops.append(tf.raw_ops.ResourceApplyGradientDescent(var=avg.handle, alpha=rates[dtype],
                                                               delta=avg.value() - v))
        return tf.group(*ops)

    def average(self, param):
        """The average variable of `param`; ValueError naming it if not tracked."""
        avg = self._by_name.get(getattr(param, "name", None))
        if avg is None:
            raise ValueError("Polyak.average: %r is not one of the averaged params" % (param,))
        return avg

    def getter(self, use_average):
        """A custom getter that reads each averaged param's average where the
        bool scalar `use_average` (a tensor, e.g. a placeholder, or a Python
        bool) is true, and the param itself where it is false.

        One evaluation graph then serves both weightings, with no swap op and
        no risk of training on swapped weights:

            with tf.variable_scope('model', reuse=True, custom_getter=ema.getter(flag)):
                eval_out = build_model(x)

        Variables that are not among `params` (non-trainable statistics, or
        anything the optimizer was not given) come back unchanged.
        """
        def get(getter, name, *args, **kwargs):
            var = getter(name, *args, **kwargs)
            avg = self._by_name.get(getattr(var, "name", None))
            if avg is None or use_average is False:
                return var
            if use_average is True:
                return avg
            return tf.where_v2(use_average, avg.value(), var.value())

        return get


def polyak(params, decay, scope="optim"):
    """Polyak average of `params` with `decay` in [0, 1); see `Polyak`."""
    return Polyak(params, decay, scope=scope)


def _bias_correction(beta, t):
    """1 - beta**t as float32, exact for beta near 1.

    beta2 = 1 - 1/(train_its*polyak_epochs) is ~0.99999 on large data sets;
    float32 rounds beta2 itself by ~6e-8, an error of ~6% in 1 - beta2**t
    at t=1 when beta2 = 1 - 1e-6. Writing 1 - beta**t = -expm1(t*log(beta)),
    with log(beta) taken in float64 by Python and expm1 in the graph, keeps
    float32 accuracy for every t.
    """
    if beta == 0.0:
        return tf.constant(1.0, tf.float32)  # 1 - 0**t = 1 for t >= 1
    return -tf.math.expm1(t * tf.constant(math.log(beta), tf.float32))


def make_train_op(name, params, grads, lr, beta1, beta2, weight_decay=1.0, epsilon=1e-8,
                  skip_nonfinite=True, loss=None, polyak_decay=None, scope="optim"):
    """One Adam or Adamax step with Polyak averaging, openai/glow's equations.

    name: 'adam' or 'adamax'.
    params: resource variables; grads: their gradients, already averaged over
        ranks. A None gradient (a param the loss does not reach) is an error.
    lr: Python number or float scalar tensor (a placeholder fed each step, for
        warm-up). beta1 in [0, 1) (0: no first moment); beta2 in (0, 1).
    weight_decay: multiplicative, in (0, 1]; 1.0 is off (glow's convention).
    skip_nonfinite: if any gradient or `loss` (optional tensor) is NaN/inf, the
        step changes nothing but `n_skipped`; decided in the graph (every
        state variable gets its old value back), so a step is still one
        session call.
    polyak_decay: decay of the average; None uses beta2, as glow does.
    scope: variable scope of the optimizer state (checkpoint keys).
    Returns a `TrainOp`.
    """
    if name not in OPTIMIZERS:
        raise ValueError("optimizer %r: expected one of %s" % (name, ", ".join(OPTIMIZERS)))
    params = _check_params(params)
    grads = list(grads)
    if len(grads) != len(params):
        raise ValueError("got %d gradients for %d params" % (len(grads), len(params)))
    _check_unit_interval("beta1", beta1)
    _check_unit_interval("beta2", beta2, low_open=True)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
            or not 0.0 < weight_decay <= 1.0:
        raise ValueError("weight_decay=%r: must be a number in (0, 1]; it multiplies the "
                         "weights each step, 1.0 disables it" % (weight_decay,))
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon < 0:
        raise ValueError("epsilon=%r: must be a number >= 0" % (epsilon,))
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr < 0:
        raise ValueError("lr=%r: must be >= 0" % (lr,))
    polyak_decay = beta2 if polyak_decay is None else polyak_decay

    dense = []
    for p, g in zip(params, grads):
        if g is None:
            raise ValueError("gradient of param %s is None: the loss does not depend on it; "
                             "leave it out of params" % p.name)
        # IndexedSlices (from gathers) become dense: Adam touches every entry anyway.
        g = tf.convert_to_tensor(g, dtype=p.dtype.base_dtype)
        if not g.get_shape().is_compatible_with(p.get_shape()):
            raise ValueError("gradient of param %s has shape %s, the param %s"
                             % (p.name, g.get_shape(), p.get_shape()))
        dense.append(g)

    with tf.variable_scope(scope):
        step = tf.get_variable("t", shape=[], dtype=tf.float32,
                               initializer=tf.constant_initializer(1.0),
                               trainable=False, use_resource=True)
        n_skipped = tf.get_variable("n_skipped", shape=[], dtype=tf.int64,
                                    initializer=tf.zeros_initializer(),
                                    trainable=False, use_resource=True)
        # beta1 = 0 (m1 = g) keeps an m1 slot too: the fused kernels need one.
        m1s = [_slot(p, "m1", tfops.Zeros()) for p in params]
        m2s = [_slot(p, "m2", tfops.Zeros()) for p in params]
    ema = polyak(params, polyak_decay, scope=scope)
    slots = [step, n_skipped] + m1s + m2s + ema.variables

    with tf.name_scope("%s_step" % name):
        checks = [tf.reduce_all(tf.is_finite(g)) for g in dense]
        if loss is not None:
            checks.append(tf.reduce_all(tf.is_finite(loss)))
        grads_finite = tf.reduce_all(tf.stack(checks), name="grads_finite")
        apply = grads_finite if skip_nonfinite else None

        t = step.read_value()
        lr32 = tf.cast(lr, tf.float32)
        alpha32 = lr32 * tf.sqrt(_bias_correction(beta2, t)) / _bias_correction(beta1, t)
        # TF's fused Adam/AdaMax kernels update weight and moments in place:
        #   m1 += (g - m1)*(1 - beta1); Adam: m2 += (g^2 - m2)*(1 - beta2),
        #   AdaMax: m2 = max(beta2*m2, |g|); w -= lr*m1/(sqrt(m2) or m2 + eps)
        # with their bias-correction powers at 0, so lr is alpha_t. Computing
        # new values and selecting them afterwards kept a new copy of every
        # weight and moment alive until the skip decision, which needs every
        # gradient: 500 MiB at the paper's model (docs/BENCHMARKS.md). A
        # skipped step runs the same kernels as the identity: gradient 0,
        # beta1 = beta2 = 1, lr 0 (the state stays finite, so 0 * it is 0).
        consts = {}  # per param dtype
        updates, new_weights = [], []
        for p, g, m1, m2 in zip(params, dense, m1s, m2s):
            dtype = p.dtype.base_dtype
            if dtype not in consts:
                consts[dtype] = dict(
                    lr=tf.cast(alpha32, dtype) * _on(apply, dtype), beta1=_blend(apply, beta1, 1.0, dtype),
                    beta2=_blend(apply, beta2, 1.0, dtype), epsilon=tf.constant(epsilon, dtype),
                    no_power=tf.constant(0.0, dtype), decay=_blend(apply, weight_decay, 1.0, dtype))
            c = consts[dtype]
            if apply is not None:
                g = tf.where_v2(apply, g, tf.constant(0.0, dtype))
            if weight_decay != 1.0:
                # w = weight_decay*w - alpha_t*delta: scale, then the kernel's step.
                scaled = tf.raw_ops.AssignVariableOp(resource=p.handle, value=p.value() * c["decay"])
                deps = [scaled]
            else:
                deps = []
            with tf.control_dependencies(deps):
                if name == "adam":
                    update = tf.raw_ops.ResourceApplyAdam(
                        var=p.handle, m=m1.handle, v=m2.handle, beta1_power=c["no_power"],
                        beta2_power=c["no_power"], lr=c["lr"], beta1=c["beta1"], beta2=c["beta2"],
                        epsilon=c["epsilon"], grad=g)
                else:
                    update = tf.raw_ops.ResourceApplyAdaMax(
                        var=p.handle, m=m1.handle, v=m2.handle, beta1_power=c["no_power"], lr=c["lr"],
                        beta1=c["beta1"], beta2=c["beta2"], epsilon=c["epsilon"], grad=g)
            updates.append(update)
            with tf.control_dependencies([update]):
                new_weights.append(p.value())
        # The average reads this step's new weights after their update, so
        # it cannot race the assignments above.
        updates.append(ema.update(new_weights, apply))
        # t was read for alpha_t, which every weight update consumes; only
        # after those may t advance.
        with tf.control_dependencies(updates):
            if apply is None:
                counted = [step.assign_add(1.0, read_value=False)]
            else:
                counted = [step.assign_add(tf.cast(apply, tf.float32), read_value=False),
                           n_skipped.assign_add(1 - tf.cast(apply, tf.int64), read_value=False)]
        with tf.control_dependencies(counted):
            train_op = tf.identity(grads_finite, name="train_op").op
    return TrainOp(train_op=train_op, step=step, slots=slots, n_skipped=n_skipped,
                   grads_finite=grads_finite, ema=ema)
