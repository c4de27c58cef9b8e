"""Adam / Adamax with Polyak averaging, openai/glow's equations (Kingma & Dhariwal 2018; Kingma & Ba
2015), t counting applied steps from 1:

    alpha_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)    (1 - beta1^t := 1 if beta1 == 0)
    m1      = beta1*m1 + (1 - beta1)*g
    Adam:   m2 = beta2*m2 + (1 - beta2)*g^2,  delta = m1 / (sqrt(m2) + eps)
    Adamax: m2 = max(beta2*m2, |g|),          delta = m1 / (m2 + eps)
    w       = weight_decay*w - alpha_t*delta           (a factor; 1.0 = off)
    ema     = decay*ema + (1 - decay)*w                (decay defaults to beta2)

As in glow, Adamax keeps sqrt(1 - beta2^t) in alpha_t (Kingma & Ba's Algorithm 2 has none).
Deliberate differences from glow:
  * A step with a non-finite gradient or loss changes no weight, moment, t or average and counts itself
    in `n_skipped` (one NaN batch would poison the moments for good). The graph decides, so a step is one session call.
  * The average reads the weights after this step's update (glow's read was unordered) and starts at
    the weights `seed_op` copies after data-dependent init, so it needs no zero-debiasing.
  * State variables are non-trainable and named, as checkpoint keys: `<scope>/t`, `<scope>/n_skipped`,
    `<scope>/<param op name>/{m1,m2,ema}`.
  * TF's fused kernels (ResourceApplyAdam / ResourceApplyAdaMax, the same equations) update each weight and
    its moments in place: no copy of every weight waits for the skip decision. They keep m1 even if beta1 = 0.
  * The caller passes beta2 (glow: 1 - 1/(train_its*polyak_epochs)) and gradients averaged over ranks.
"""
import collections
import math

import tensorflow.compat.v1 as tf

import tfops
import utils

OPTIMIZERS = ("adam", "adamax")
_STATE = dict(trainable=False, use_resource=True)  # every state variable

# train_op: run once per step (update, average, counters). n_skipped: int64 variable, steps skipped for a
# non-finite gradient or loss. grads_finite: bool scalar. ema: the `Polyak` average (run ema.seed_op after init).
# grad_norm: the gradients' global norm before any clipping.
TrainOp = collections.namedtuple("TrainOp", ["train_op", "n_skipped", "grads_finite", "ema", "grad_norm"])


def average_key(name, scope="optim"):
    """The checkpoint key of the Polyak average of variable `name` (Polyak's `<scope>/<param op name>/ema`)."""
    return "%s/%s/ema" % (scope, name)


def is_state(key, scope="optim"):
    """True for a checkpoint key of the optimizer's own state (`<scope>/t`, `<scope>/n_skipped`, the moments
    `<scope>/.../m1` and `m2`), which training needs and using the model does not; False for the Polyak averages."""
    return key in (scope + "/t", scope + "/n_skipped") or (
        key.startswith(scope + "/") and key.rsplit("/", 1)[-1] in ("m1", "m2"))


def _check_number(what, value, ok, accepted):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ValueError("%s=%r: must be a number %s" % (what, value, accepted))


# make_train_op's numbers: (what is accepted, the test).
_NUMBERS = {"lr": (">= 0", lambda v: v >= 0.0), "beta1": ("in [0, 1)", lambda v: 0.0 <= v < 1.0),
            "beta2": ("in (0, 1)", lambda v: 0.0 < v < 1.0),
            "weight_decay": ("in (0, 1]; it multiplies the weights each step, 1.0 disables it",
                             lambda v: 0.0 < v <= 1.0),
            "epsilon": (">= 0", lambda v: v >= 0.0), "max_grad_value": (">= 0 (0: off)", lambda v: v >= 0.0),
            "max_grad_norm": (">= 0 (0: off)", lambda v: v >= 0.0)}


def _check_numbers(**values):
    """Each of make_train_op's numbers by its _NUMBERS test; lr may be a tensor (fed each step) instead."""
    for what, value in values.items():
        if what == "lr" and not isinstance(value, (int, float)):
            continue
        _check_number(what, value, _NUMBERS[what][1], _NUMBERS[what][0])


def _check_params(params):
    """Resource variables with a known shape, each once. Returns a list."""
    params = list(params)
    if not params:
        raise ValueError("params is empty: nothing to optimise")
    seen = set()
    for p in params:
        # Duck-typed (TF 2.x resource variables are no tf.compat.v1.Variable). A ref variable is
        # read when its consumer runs, so update order would differ between TF 1.15 and 2.x.
        kind = getattr(getattr(p, "op", None), "type", type(p).__name__)
        if kind != "VarHandleOp" or not hasattr(p, "read_value"):
            raise ValueError("param %s is a %s, not a resource variable: create it with "
                             "use_resource=True" % (getattr(p, "name", p), kind))
        if not p.get_shape().is_fully_defined():
            raise ValueError("param %s has shape %s: the optimizer needs a fully defined shape"
                             % (p.name, p.get_shape()))
        if p.name in seen:
            raise ValueError("param %s appears twice in params" % p.name)
        seen.add(p.name)
    return params


def _dense_grads(params, grads):
    """`grads` as dense tensors of their params' dtype; ValueError naming a bad one."""
    grads = list(grads)
    if len(grads) != len(params):
        raise ValueError("got %d gradients for %d params" % (len(grads), len(params)))
    dense = []
    for p, g in zip(params, grads):
        if g is None:
            raise ValueError("gradient of param %s is None: the loss does not depend on it; "
                             "leave it out of params" % p.name)
        # IndexedSlices (from gathers) become dense: Adam touches every entry anyway.
        g = tf.convert_to_tensor(g, dtype=p.dtype.base_dtype)
        if not g.get_shape().is_compatible_with(p.get_shape()):
            raise ValueError("gradient of param %s has shape %s, the param %s" % (p.name, g.get_shape(), p.get_shape()))
        dense.append(g)
    return dense


def _slot(param, suffix, initializer):
    """State variable `<scope>/<param op name>/<suffix>`."""
    shape = None if tf.is_tensor(initializer) else param.get_shape()
    return tf.get_variable("%s/%s" % (param.op.name, suffix), shape, param.dtype.base_dtype, initializer, **_STATE)


def _if_applied(apply, value, skipped, dtype):
    """Scalar `value` where the bool scalar `apply` is true, else `skipped`, as `dtype`. A Python number becomes
    a constant of `dtype` directly: a cast from float32 would round beta2 = 0.99 in a float64 model."""
    value = tf.cast(value, dtype) if tf.is_tensor(value) else tf.constant(value, dtype)
    return tf.where_v2(apply, value, tf.constant(skipped, dtype))


class Polyak(object):
    """Exponential moving average of params (Polyak & Juditsky 1992), created beside the model, not inside the
    optimizer: a graph that only evaluates reads the averages through `getter` and builds no optimizer.

    params, variables: the params tracked so far and their averages `<scope>/<param op name>/ema`, in order. `track`
    adds params; `getter` adds each trainable variable it reads, so an evaluation graph built first creates the
    averages of exactly the model's weights. seed_op: `avg := param` for every tracked param; run it after
    initialisation and data-dependent init, so the average starts at the weights the model starts from."""

    def __init__(self, params, decay, scope="optim"):
        _check_number("decay", decay, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
        self.decay, self.scope = float(decay), scope
        self._root = tf.get_variable_scope()  # averages are created here, whichever scope asks for them
        self._by_name = collections.OrderedDict()  # param name -> (param, average)
        self._seed = (0, None)  # (params it covers, op)
        if params:
            self.track(params)

    @property
    def params(self):
        return [p for p, _ in self._by_name.values()]

    @property
    def variables(self):
        return [a for _, a in self._by_name.values()]

    def track(self, params):
        """Averages for `params` (resource variables), created where missing; returns them in order."""
        return [self._average(p) for p in _check_params(params)]

    def _average(self, param):
        if param.name not in self._by_name:
            with tf.get_default_graph().name_scope(None), tf.variable_scope(self._root, auxiliary_name_scope=False), \
                    tf.variable_scope(self.scope, reuse=tf.AUTO_REUSE):
                # From the param's initial value, read in the same initializer run: even unseeded, real weights.
                self._by_name[param.name] = (param, _slot(param, "ema", param.initial_value))
        return self._by_name[param.name][1]

    @property
    def seed_op(self):
        """The op copying every tracked param to its average (built again if params were tracked since)."""
        if self._seed[0] != len(self._by_name):
            with tf.name_scope("polyak_seed"):
                self._seed = (len(self._by_name), tf.group(*[a.assign(p.value(), read_value=False)
                                                             for p, a in self._by_name.values()]))
        return self._seed[1]

    def update(self, values, apply):
        """Op moving each average towards `values` (aligned with params) where the bool scalar `apply` is true.
        Built in the caller's context: the caller decides which weights it reads."""
        values, averages = list(values), self.variables
        if len(values) != len(averages):
            raise ValueError("Polyak.update: got %d values for %d params" % (len(values), len(averages)))
        # In place, avg -= rate*(avg - value): decay*avg + (1 - decay)*value at rate = 1 - decay,
        # unchanged at rate = 0, with no new copy of any weight.
        rates = {d: _if_applied(apply, 1.0 - self.decay, 0.0, d)
                 for d in dict.fromkeys(a.dtype.base_dtype for a in averages)}
        return tf.group(*[tf.raw_ops.ResourceApplyGradientDescent(
            var=avg.handle, alpha=rates[avg.dtype.base_dtype], delta=avg.value() - v)
            for avg, v in zip(averages, values)])

    def getter(self, use_average):
        """Custom getter reading each trainable float variable's average where the bool scalar `use_average` (tensor
        or Python bool) is true, else the variable; other variables unchanged. One evaluation graph then serves both
        weightings, with no swap op to forget: build it in `tf.variable_scope('model', custom_getter=ema.getter(flag))`.
        A variable's average is created on its first read (`track`)."""
        def get(getter, name, *args, **kwargs):
            var = getter(name, *args, **kwargs)
            trainable = kwargs.get("trainable") is not False and var.dtype.base_dtype.is_floating
            if use_average is False or not trainable:
                return var
            avg = self._average(var)
            if use_average is True:
                return avg
            return tf.where_v2(use_average, avg.value(), var.value())

        return get


def _bias_correction(beta, t):
    """1 - beta**t as float32, exact for beta near 1: float32 rounds beta2 = 1 - 1e-6 by ~6e-8 (6% of 1 - beta2**t
    at t = 1); -expm1(t*log(beta)), with log(beta) taken in float64 by Python, keeps float32 accuracy for every t."""
    if beta == 0.0:
        return tf.constant(1.0, tf.float32)  # 1 - 0**t = 1 for t >= 1
    return -tf.math.expm1(t * tf.constant(math.log(beta), tf.float32))


def _kernel_constants(dtype, apply, alpha32, beta1, beta2, epsilon, weight_decay):
    """The fused kernels' scalars for params of `dtype`: bias-correction powers 0, so lr is alpha_t; on a skipped
    step the identity: lr 0, beta1 = beta2 = 1, decay 1."""
    return dict(lr=_if_applied(apply, alpha32, 0.0, dtype), beta1=_if_applied(apply, beta1, 1.0, dtype),
                beta2=_if_applied(apply, beta2, 1.0, dtype), decay=_if_applied(apply, weight_decay, 1.0, dtype),
                epsilon=tf.constant(epsilon, dtype), no_power=tf.constant(0.0, dtype))


def _fused_update(name, p, g, m1, m2, c, apply, weight_decay):
    """Op updating param `p` and its moments in place by TF's fused kernel (`c`: from _kernel_constants). A
    skipped step also feeds gradient 0: its own may be NaN, and 0 * NaN is NaN."""
    g = tf.where_v2(apply, g, tf.zeros([], g.dtype))
    # w = weight_decay*w - alpha_t*delta: scale, then the kernel's step.
    deps = [] if weight_decay == 1.0 else [tf.raw_ops.AssignVariableOp(resource=p.handle, value=p.value() * c["decay"])]
    with tf.control_dependencies(deps):
        args = dict(var=p.handle, m=m1.handle, v=m2.handle, beta1_power=c["no_power"], lr=c["lr"],
                    beta1=c["beta1"], beta2=c["beta2"], epsilon=c["epsilon"], grad=g)
        if name == "adam":
            return tf.raw_ops.ResourceApplyAdam(beta2_power=c["no_power"], **args)
        return tf.raw_ops.ResourceApplyAdaMax(**args)


def make_train_op(name, params, grads, lr, beta1, beta2, weight_decay=1.0, epsilon=1e-8, loss=None,
                  polyak_decay=None, scope="optim", ema=None, max_grad_value=0.0, max_grad_norm=0.0):
    """One Adam or Adamax step with Polyak averaging, the module's equations; returns a `TrainOp`.

    name: 'adam' or 'adamax'. params: resource variables. grads: their gradients, already
        averaged over ranks; a None gradient (a param the loss does not reach) is an error.
    lr: Python number or float scalar tensor (e.g. a placeholder fed each step, for warm-up).
    beta1 in [0, 1) (0: no first moment); beta2 in (0, 1); weight_decay: a factor in (0, 1], 1.0 = off.
    loss: optional tensor; if it or any gradient is NaN/inf, the step changes only `n_skipped`.
    polyak_decay: None uses beta2, as glow does. scope: of the state variables (checkpoint keys).
    ema: the model's `Polyak` average, if it has one already (it then tracks params; polyak_decay is its own).
    max_grad_value, max_grad_norm: clip each gradient entry to [-v, v], then all gradients together to a global
        norm of at most n (0: off; openai/glow clips neither). A non-finite gradient stays non-finite: the step is
        skipped."""
    utils.check_choice("optimizer", name, OPTIMIZERS)
    params = _check_params(params)
    grads = _dense_grads(params, grads)
    _check_numbers(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, epsilon=epsilon,
                   max_grad_value=max_grad_value, max_grad_norm=max_grad_norm)
    grad_norm = tf.global_norm(grads)
    if max_grad_value:
        grads = [tf.clip_by_value(g, -max_grad_value, max_grad_value) for g in grads]
    if max_grad_norm:
        grads = tf.clip_by_global_norm(grads, max_grad_norm)[0]
    with tf.variable_scope(scope):
        step = tf.get_variable("t", [], tf.float32, tf.ones_initializer(), **_STATE)  # exact to 2**24 steps
        n_skipped = tf.get_variable("n_skipped", [], tf.int64, tf.zeros_initializer(), **_STATE)
        m1s = [_slot(p, "m1", tfops.Zeros()) for p in params]
        m2s = [_slot(p, "m2", tfops.Zeros()) for p in params]
    if ema is None:
        ema = Polyak(params, beta2 if polyak_decay is None else polyak_decay, scope=scope)
    ema.track(params)
    if len(ema.params) != len(params):
        raise ValueError("the Polyak average tracks %d variables, the optimizer %d params: average exactly the "
                         "params" % (len(ema.params), len(params)))
    with tf.name_scope("%s_step" % name):
        checks = [tf.reduce_all(tf.is_finite(x)) for x in grads + ([] if loss is None else [loss])]
        apply = grads_finite = tf.reduce_all(tf.stack(checks), name="grads_finite")
        t = step.read_value()
        alpha32 = tf.cast(lr, tf.float32) * tf.sqrt(_bias_correction(beta2, t)) / _bias_correction(beta1, t)
        consts = {d: _kernel_constants(d, apply, alpha32, beta1, beta2, epsilon, weight_decay)
                  for d in dict.fromkeys(p.dtype.base_dtype for p in params)}
        updates, new_weights = [], []
        for p, g, m1, m2 in zip(params, grads, m1s, m2s):
            updates.append(_fused_update(name, p, g, m1, m2, consts[p.dtype.base_dtype], apply, weight_decay))
            with tf.control_dependencies(updates[-1:]):
                new_weights.append(p.value())
        # The average reads each weight after its update: no race.
        after = dict((p.name, w) for p, w in zip(params, new_weights))
        updates.append(ema.update([after[p.name] for p in ema.params], apply))
        # Every weight update consumes alpha_t, which read t: only then may t advance.
        with tf.control_dependencies(updates):
            counted = [step.assign_add(tf.cast(apply, tf.float32), read_value=False),
                       n_skipped.assign_add(1 - tf.cast(apply, tf.int64), read_value=False)]
        with tf.control_dependencies(counted):
            train_op = tf.identity(grads_finite, name="train_op").op
    return TrainOp(train_op=train_op, n_skipped=n_skipped, grads_finite=grads_finite, ema=ema, grad_norm=grad_norm)
