"""The flow steps' variables: one layout, whichever way a graph runs the steps.

A level's `depth` steps have the same variables; each is one variable stacked over the steps, [depth, ...], under
the level's scope `step/`: row i of "model/0/step/actnorm/b" is step i's actnorm bias. An unrolled graph builds step i
under scope "<i>" (its ops, and the 1x1 convs' names in CONV1X1, are step i's), a looped one (looped.py) builds one
step under "step"; either reads row i through `Stacks.scope`. The optimizer, the Polyak averages and the saver see
a level's few stacked variables, and a checkpoint is the same for every gradient mode and for --loop_steps.
(Run folders written before this layout: scripts/upgrade_run.py.)

`unrolled_steps` is the model's plain runner; memory_saving_gradients and looped run the same steps otherwise.
"""
import collections

import numpy as np
import tensorflow.compat.v1 as tf

import tfops

STEP_SCOPE = "step"


def level_variables(make_step, depth, z):
    """Under a level's variable scope: its steps' variables, each stacked over the steps as `STEP_SCOPE/<name>`
    [depth, ...], as the scope's custom getter gives them (an evaluation graph's: the Polyak averages; an export's:
    constants): ({name: value} of the trainable float variables, {the same} of the others). The first graph to ask
    creates them (_requests)."""
    prefix = tf.get_variable_scope().name + "/" + STEP_SCOPE + "/"
    made = [v for v in tf.global_variables() if v.op.name.startswith(prefix)]
    requests = collections.OrderedDict(
        (v.op.name[len(prefix):], dict(shape=v.get_shape(), dtype=v.dtype.base_dtype, trainable=v.trainable))
        for v in made) if made else _requests(make_step, depth, z)
    params, constants = {}, {}
    with tf.variable_scope(STEP_SCOPE, reuse=tf.AUTO_REUSE):
        for name, request in requests.items():
            value = tf.get_variable(name, **request)
            trainable = request.get("trainable") is not False and tf.as_dtype(request["dtype"]).is_floating
            (params if trainable else constants)[name] = value
    return params, constants


def _requests(make_step, depth, z):
    """{name: tf.get_variable kwargs} of a level's stacked variables: each step is built alone in a scratch graph,
    under its unrolled scope name and the graph seed, recording what it asks tf.get_variable for; each stacked
    variable's initial value stacks the steps'. Initial values from tfops.layer_rng (1x1 convs, permutations) are each
    step's own, row by row; TF's random initialisers draw the whole stack at once."""
    scope = tf.get_variable_scope().name
    requests = collections.OrderedDict()  # name in the step -> [each step's tf.get_variable kwargs]

    def record(getter, name, *args, **kwargs):
        requests.setdefault(name[len(scope) + 1:].split("/", 1)[1], []).append(kwargs)
        return getter(name, *args, **kwargs)

    seed = tf.get_default_graph().seed
    for i in range(depth):
        with tf.Graph().as_default():  # one step per scratch graph: one alive at a time
            tf.set_random_seed(seed)
            z_in = tf.placeholder(z.dtype, z.get_shape())
            with tf.variable_scope(scope, custom_getter=record):
                make_step(str(i))(z_in, tf.zeros([tf.shape(z_in)[0]], z.dtype), False)
    return collections.OrderedDict((name, _request(name, steps)) for name, steps in requests.items())


def _request(name, steps):
    """tf.get_variable kwargs for one variable stacked over the steps, from each step's request (`steps`, in order)."""
    first = dict((k, v) for k, v in steps[0].items() if k not in ("reuse", "custom_getter", "name"))
    inits = [s.get("initializer") for s in steps]
    if all(isinstance(i, (np.ndarray, np.generic, list, int, float)) for i in inits):
        return dict(first, initializer=np.stack([np.asarray(i) for i in inits]), shape=None)
    same = all(type(i) is type(inits[0]) and hasattr(i, "get_config") and i.get_config() == inits[0].get_config()
               for i in inits)
    if not same or first.get("shape") is None:
        raise ValueError("flow steps: variable %r has initialisers %r, which cannot be stacked (expected NumPy "
                         "values, or one TF initializer object of the same config for every step)"
                         % (name, sorted(set(type(i).__name__ for i in inits))))
    return dict(first, shape=[len(steps)] + list(tf.TensorShape(first["shape"]).as_list()))


class InitValue(collections.namedtuple("InitValue", "name recorded")):
    """The init pass getter's stand-in for a data-dependent variable: `assign` records the value instead."""

    def assign(self, value):
        self.recorded.append((self.name, value))
        return value


class Stacks(object):
    """A level's stacked variables as a graph reads them ({name: [depth, ...] tensor}), and the variable scope in
    which a step reads its rows. level: the level's variable scope (by default the current one)."""

    def __init__(self, stacks, depth, level=None):
        self.stacks, self.depth, self._rows = dict(stacks), depth, {}
        self.level = level or tf.get_variable_scope()
        self.prefix = self.level.name + "/"
        self._name_scope = tf.get_default_graph().get_name_scope()

    def row(self, name, i):
        """Row i (a Python int: one unstack per variable, whose gradient is one stack; or a tensor: a gather), built
        in the name scope this was made in (a getter runs in the root one)."""
        with tf.name_scope(self._name_scope + "/" if self._name_scope else ""):
            if not isinstance(i, int):
                return tf.gather(self.stacks[name], i)
            if name not in self._rows:
                self._rows[name] = tf.unstack(self.stacks[name], num=self.depth)
            return self._rows[name][i]

    def scope(self, i, recorded=None):
        """The level's variable scope, in which a step (under any sub-scope: "3" or "step") reads row i of its
        variables; with a list `recorded` (the init pass), data-dependent variables are InitValues recording there."""
        def read_row(getter, name, *args, **kwargs):  # (TF passes `getter`, by name; the rows stand in for it)
            key = name[len(self.prefix):].split("/", 1)[-1] if name.startswith(self.prefix) else None
            if key not in self.stacks:
                raise ValueError("flow step variable %r has no stack (stacked: %s under %s%s)"
                                 % (name, ", ".join(sorted(self.stacks)), self.prefix, STEP_SCOPE))
            if recorded is not None and isinstance(kwargs.get("initializer"), tfops.DataDependent):
                return InitValue(key, recorded)
            return self.row(key, i)

        return tf.variable_scope(self.level, reuse=True, custom_getter=read_row, auxiliary_name_scope=False)


def assign_init(variables, values, z, logdet):
    """The init pass's end: assign values ({name: [depth, ...] tensor}) to the stacked variables, before z, logdet
    return."""
    assigns = [variables[name].assign(tf.cast(value, variables[name].dtype.base_dtype))
               for name, value in sorted(values.items())]
    with tf.control_dependencies(assigns):
        return tf.identity(z), tf.identity(logdet)


def unrolled_steps(make_step, depth, z, logdet, reverse=False):
    """The model's plain runner (model.Glow's run_steps): a level's `depth` steps, step i under scope "<i>" reading
    row i of the stacked variables, or their inverses last to first; in the init pass, each step's data-dependent
    values are assigned to their rows."""
    params, constants = level_variables(make_step, depth, z)
    stacks = Stacks(dict(params, **constants), depth)
    init = tfops.in_ddi_init() and not reverse
    recorded = [[] for _ in range(depth)]
    for i in (reversed(range(depth)) if reverse else range(depth)):
        with stacks.scope(i, recorded[i] if init else None):
            z, logdet = make_step(str(i))(z, logdet, reverse)
    if not init:
        return z, logdet
    names = [name for name, _ in recorded[0]]
    if not names or any([name for name, _ in step] != names for step in recorded):
        raise ValueError("flow steps: the init pass recorded %s data-dependent values per step, expected the same "
                         "non-empty list" % [[name for name, _ in step] for step in recorded])
    values = dict((name, tf.stack([dict(step)[name] for step in recorded])) for name in names)
    return assign_init(dict(params, **constants), values, z, logdet)
