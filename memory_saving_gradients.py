"""How Glow's flow is differentiated, by --gradient_checkpointing mode.

Plain backprop ('none') keeps every step's activations, mostly the coupling networks' hidden layers, until the
backward pass reaches them. Two modes keep less of the flow:

'recompute' (openai/glow's default; Chen et al. 2016): keep each step's input; the backward pass runs the step again
    from it and backprops through that copy: one [B, H, W, C] tensor per step plus one step's internals.
'invertible' (Gomez et al. 2017, RevNets): keep each level's output only; the backward pass rebuilds each step's
    input with its inverse, so memory does not grow with depth, and gradients match plain ones to the inverses'
    float rounding (`reconstruction_error`). A step declared by its coupling's parts (a tfops.CouplingStep) costs
    what 'recompute' costs: one evaluation of the coupling network both rebuilds the input and carries the gradient.
    Other steps are inverted, then recomputed.

`flow` runs a level's steps in one `tf.custom_gradient` whose gradient function rebuilds them: tf.recompute_grad
saves nothing in TF 2.x compat.v1 graph mode (nothing holds its recomputation back until the backward pass). Here
each recomputation reads its input through a control dependency on the gradient arriving at its step, so it runs
only once the backward pass gets there, as new ops that Grappler cannot merge with the forward ones; a custom
getter collects its variable reads, so the variables' gradients come from the recomputed copy
alone. looped.py does the same for --loop_steps, a backward loop over `step_backward`.

The loss must be built for the mode (model.Glow.with_steps(checkpointed_steps(mode)) or looped.looped_steps(mode));
`gradients` checks it: a mismatch silently keeps every activation. Data-dependent init, evaluation and sampling graphs
are built with the model's plain runner.
"""
import collections

import tensorflow.compat.v1 as tf

import stacked
import tfops
import utils

MODES = ("none", "recompute", "invertible")
COLLECTION = "memory_saving_gradients_flows"


def check_mode(mode):
    return utils.check_choice("gradient checkpointing mode", mode, MODES)


class FlowRecord(object):
    """What a checkpointed flow built, for `gradients` and `reconstruction_error`: its mode and `op` (the custom
    gradient's IdentityN giving its outputs; set by `register`)."""

    def __init__(self, mode):
        self.mode, self.op = mode, None

    def both_inputs(self):
        """[depth, B, H, W, C] stacks of each step's input in the forward pass and as the backward pass has it."""
        raise NotImplementedError


class StepsRecord(FlowRecord):
    """A checkpointed flow of separate steps (`flow`): each step's forward input and, once the backward pass is
    built, {step: its input as the backward pass had it}."""

    def __init__(self, mode):
        super(StepsRecord, self).__init__(mode)
        self.step_inputs, self.backward_inputs = [], {}

    def both_inputs(self):
        if not self.backward_inputs:
            raise ValueError("reconstruction_error: build the gradients of this loss first")
        return tf.stack(self.step_inputs), tf.stack([self.backward_inputs[i] for i in range(len(self.step_inputs))])


def register(record, z, logdet):
    """Record the flow whose custom gradient gave z, logdet; returns them."""
    record.op = z.op
    assert z.op.type == "IdentityN" and logdet.op is z.op, "tf.custom_gradient changed: expected one IdentityN"
    tf.add_to_collection(COLLECTION, record)
    return z, logdet


def checkpointed_steps(mode):
    """A model.Glow run_steps (for Glow.with_steps) of unrolled steps whose forward pass has `mode`'s gradient."""
    check_mode(mode)

    def run_steps(make_step, depth, z, logdet, reverse=False):
        if mode == "none" or reverse or tfops.in_ddi_init():  # (the inverse and the init pass are not differentiated)
            return stacked.unrolled_steps(make_step, depth, z, logdet, reverse)
        params, constants = stacked.level_variables(make_step, depth, z)
        return flow([make_step(str(i)) for i in range(depth)], params, constants, z, logdet, mode)

    return run_steps


def flow(steps, params, constants, z, logdet, mode):
    """Run a level's flow steps forward (z: [B, H, W, C], logdet: [B]) with the gradient of 'recompute' or
    'invertible'. steps[i](z, logdet, reverse) -> (z, logdet) reads row i of the level's stacked variables
    (stacked.Stacks; params: {name: [depth, ...]} of the trainable float ones, constants: the others); for
    'invertible', step(..., reverse=True) must invert step(..., False). The custom gradient takes the params' reads,
    so their gradients (stacks of the steps' rows) reach them."""
    depth, names, record = len(steps), sorted(params), StepsRecord(mode)

    def read(values):
        return dict((name, tf.convert_to_tensor(v)) for name, v in values.items())

    constant_reads = read(constants)

    @tf.custom_gradient
    def checkpointed(z, logdet, *reads):
        stacks = stacked.Stacks(dict(constant_reads, **dict(zip(names, reads))), depth)
        for i, step in enumerate(steps):
            record.step_inputs.append(z)
            with stacks.scope(i):
                z, logdet = step(z, logdet, False)

        def grad_fn(dz, dlogdet, variables=None):
            """Steps last to first, each recomputed from its kept ('recompute') or rebuilt ('invertible') input,
            reading the variables again: the backward pass keeps nothing of the forward one but its checkpoints."""
            z_next, grads = z, collections.defaultdict(list)
            again = stacked.Stacks(read(dict(params, **constants)), depth, stacks.level)

            def key(i, name):  # the name under which step i reads variable `name`
                return "%s%d/%s" % (stacks.prefix, i, name)

            wanted = set(key(i, name) for i in range(depth) for name in names)
            for i in reversed(range(depth)):
                with again.scope(i) as scope:
                    z_next, dz, _ = step_backward(steps[i], scope, mode, record.step_inputs[i], z_next, dz, dlogdet,
                                                  wanted, grads)
                record.backward_inputs[i] = z_next
            rows = [[sum_gradients(grads.get(key(i, name))) for i in range(depth)] for name in names]
            # d logdet_in = d logdet_out: each step adds to the log-det it is given.
            out = [dz, dlogdet] + [tf.stack([tf.zeros_like(again.row(name, i)) if g is None else g
                                             for i, g in enumerate(row)]) for name, row in zip(names, rows)]
            # TF 2.x lists the variables behind the reads; their gradients went to the reads.
            return (out, [None] * len(variables)) if variables else out

        return (z, logdet), grad_fn

    return register(record, *checkpointed(z, logdet, *[tf.convert_to_tensor(params[name]) for name in names]))


def _in_scope(scope, getter=None):
    """`scope` again, its variables reused (and read through `getter`)."""
    return tf.variable_scope(scope, reuse=True, custom_getter=getter, auxiliary_name_scope=False)


class _Reads(object):
    """A custom getter that passes every variable read through a new identity op, kept by the variable's op name,
    so that tf.gradients stops at one recomputed step's reads instead of walking every use of the variable."""

    def __init__(self):
        self.reads = collections.OrderedDict()

    def __call__(self, getter, name, *args, **kwargs):
        read = tf.identity(tf.convert_to_tensor(getter(name, *args, **kwargs)))
        self.reads.setdefault(name, []).append(read)
        return read

    def gradients(self, ys, xs, grad_ys, wanted, by_name):
        """tf.gradients(ys, xs, grad_ys); those of the reads of variables in `wanted` (op names) go to by_name[name]."""
        pairs = [(k, r) for k in self.reads if k in wanted for r in self.reads[k]]
        grads = tf.gradients(ys, xs + [r for _, r in pairs], grad_ys=grad_ys)
        for (name, _), g in zip(pairs, grads[len(xs):]):
            if g is not None:
                by_name[name].append(g)
        return grads[:len(xs)]


def _rebuild_coupling_step(step, scope, z_out, dz, dlogdet, wanted, by_name):
    """'invertible' backprop of a coupling step from its output: (the rebuilt input, d input). The coupling passed z1
    through, so z_out's first half is the network's forward input: h = nn(z1), computed once, rebuilds z2's input
    (couple's inverse) and carries the gradient; the cheap prefix is inverted, then recomputed for its gradient."""
    zeros = tf.zeros_like(dlogdet)
    nn_reads, prefix_reads, couple_reads = _Reads(), _Reads(), _Reads()
    with tf.control_dependencies([dz]):
        y1, y2 = tf.split(tf.identity(z_out), 2, axis=3)
    dy1, dy2 = tf.split(dz, 2, axis=3)
    with _in_scope(scope, nn_reads):
        h = step.nn(y1)
    with _in_scope(scope):
        x2, _ = step.couple(tf.stop_gradient(h), y2, zeros, True)
        z_in, _ = step.prefix(tf.concat([y1, x2], 3), zeros, True)
    z_in = tf.stop_gradient(z_in)
    with _in_scope(scope, prefix_reads):
        p, logdet_prefix = step.prefix(z_in, zeros, False)
    _, p2 = tf.split(p, 2, axis=3)
    with _in_scope(scope, couple_reads):
        y2_again, logdet_couple = step.couple(h, p2, zeros, False)
    # Backprop couple (d p2, d h), nn (d z1, added to what z1 got directly), prefix (d z_in).
    dp2, dh = couple_reads.gradients([y2_again, logdet_couple], [p2, h], [dy2, dlogdet], wanted, by_name)
    dy1_nn, = nn_reads.gradients([h], [y1], [dh], wanted, by_name)
    dp = tf.concat([dy1 + dy1_nn, dp2], 3)
    return z_in, prefix_reads.gradients([p, logdet_prefix], [z_in], [dp, dlogdet], wanted, by_name)[0]


def step_backward(step, scope, mode, z_kept, z_next, dz, dlogdet, wanted, by_name=None):
    """The backward pass through one step: (its input as the backward pass has it, d input, by_name: {variable op name:
    [gradient, ...]}, added to) for the variables in `wanted` (op names). z_kept: the step's input the forward pass kept
    ('recompute'); z_next: its output, from which 'invertible' rebuilds the input. scope: the step's variable scope."""
    by_name = collections.defaultdict(list) if by_name is None else by_name
    if mode == "invertible" and isinstance(step, tfops.CouplingStep):
        return _rebuild_coupling_step(step, scope, z_next, dz, dlogdet, wanted, by_name) + (by_name,)
    # The recomputation (and the inverse) waits for the step's output gradient: until the backward pass reaches it.
    with tf.control_dependencies([dz]):
        z_in = tf.identity(z_kept if mode == "recompute" else z_next)
    if mode == "invertible":
        with _in_scope(scope):
            z_in, _ = step(z_in, tf.zeros_like(dlogdet), True)
    # Differentiate the recomputed step only, never the inverse that rebuilt its input.
    z_in = tf.stop_gradient(z_in)
    reads = _Reads()
    with _in_scope(scope, reads):
        z_out, logdet_out = step(z_in, tf.zeros_like(dlogdet), False)
    dz_in, = reads.gradients([z_out, logdet_out], [z_in], [dz, dlogdet], wanted, by_name)
    assert dz_in is not None, "a flow step's output does not depend on its input"
    return z_in, dz_in, by_name


def sum_gradients(grads):
    """One tensor for a list of gradients of one variable (None for none)."""
    return None if not grads else grads[0] if len(grads) == 1 else tf.add_n(grads)


def _flows_under(tensor):
    """The FlowRecords of the checkpointed flows that `tensor` depends on."""
    records = dict((r.op.name, r) for r in tf.get_collection(COLLECTION) if r.op.graph is tensor.graph)
    seen, stack, found = set(), [tensor.op], []
    while records and stack:
        op = stack.pop()
        if op.name not in seen:
            seen.add(op.name)
            found += [records[op.name]] if op.name in records else []
            stack += [t.op for t in op.inputs] + list(op.control_inputs)
    return found


def gradients(loss, params, mode="none"):
    """d loss / d params with the flow's gradients of `mode`: tf.gradients (the custom gradients are in the
    loss's graph), once the loss is checked to be built for that mode."""
    check_mode(mode)
    built = sorted(set(r.mode for r in _flows_under(loss)))
    if built != ([] if mode == "none" else [mode]):
        raise ValueError("gradients(mode=%r) of a loss whose flow was built with checkpointing %s: pass that mode, "
                         "or build the loss with Glow.with_steps(checkpointed_steps(%r)) (or looped.looped_steps(%r))"
                         % (mode, ", ".join(built) or "'none'", mode, mode))
    # Plain backprop of a looped flow gives its stacked variables IndexedSlices (a row per iteration): made dense.
    grads = tf.gradients(loss, params)
    return [tf.math.unsorted_segment_sum(g.values, g.indices, tf.dimension_value(p.get_shape()[0]))
            if isinstance(g, tf.IndexedSlices) else g for g, p in zip(grads, params)]


def reconstruction_error(loss):
    """Max over the steps of the checkpointed flows under `loss` of max|backward input - forward input| / max|forward
    input|, float64: 0 for 'recompute'; for 'invertible' the inverses' rounding, which the gradients inherit, growing
    from the level's output down to its first step (an affine coupling's inverse multiplies it by 1/scale). Build
    `gradients(loss, ...)` first; run it apart from training (it runs the backward pass, keeping forward inputs)."""
    errors = []
    for record in _flows_under(loss):
        forward, backward = [tf.cast(t, tf.float64) for t in record.both_inputs()]  # [depth, B, H, W, C]
        diff = tf.reduce_max(tf.abs(backward - forward), axis=[1, 2, 3, 4])  # [depth]
        errors.append(tf.reduce_max(diff / tf.maximum(tf.reduce_max(tf.abs(forward), axis=[1, 2, 3, 4]), 1e-30)))
    if not errors:
        raise ValueError("reconstruction_error: the loss has no checkpointed flow")
    return tf.reduce_max(tf.stack(errors))
