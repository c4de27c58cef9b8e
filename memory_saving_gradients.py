"""Gradients of Glow's flow with less memory, by --gradient_checkpointing mode.

Plain backprop ('none') keeps every activation of every flow step until the
backward pass reaches it: for the paper's CIFAR-10 model most of that is the
width-512 hidden layers of 96 coupling networks. Two ways to keep less:

'recompute' (openai/glow's default, Chen et al. 2016): keep only each flow
    step's input; in the backward pass, run the step forward again from it
    and backprop through that copy, one step at a time. Memory for the flow's
    activations: one [B, H, W, C] tensor per step plus one step's internals.
'invertible' (Gomez et al. 2017, RevNets; Glow's steps are exactly
    invertible): keep only each level's output; in the backward pass rebuild
    each step's input from its output with the step's inverse, then recompute
    the step from the rebuilt input as above. The flow's activation memory no
    longer grows with depth. The rebuilt inputs differ from the forward ones
    by float rounding (`reconstruction_error` measures it), so gradients
    match plain ones to float tolerance, not bit for bit. A step tagged with
    its coupling's parts (`is_coupling_step`; model.FlowStep is) costs what
    'recompute' costs: its coupling
    network's input passes through the step unchanged, so the one evaluation
    that rebuilds the input also serves the gradient; any other step is
    inverted, then recomputed (one more evaluation).

How: `flow` runs a level's steps inside one `tf.custom_gradient`, whose
gradient function rebuilds the steps in the backward pass. openai/glow edited
the finished graph with tf.contrib.graph_editor, which TF 2.x lacks, and
`tf.recompute_grad` saves nothing in TF 2.x graph mode (its recomputation is
not held back until the backward pass). Here every recomputation reads its
input through a control dependency on the gradient arriving at that step, so
it cannot run before the backward pass gets there, and the recomputed ops are
new ops (fresh variable reads), so Grappler cannot merge them with the
forward ones. The recomputation re-enters the level's variable scope with
reuse=True: same variables (the model's scope makes resource variables, which
`tf.custom_gradient` requires), and a custom getter collects the values it
reads so that the variables' gradients come from the recomputed copy alone.

looped.py does the same for a level whose steps run as one tf.while_loop
(--loop_steps): its backward pass is a second loop over `step_backward`.

The graph must be built for the mode (a Glow whose run_steps is
`unrolled(mode)` or looped.runner(mode), its losses built with
for_gradients=True) and `gradients(loss, params, mode)` checks that it was: a mismatch would
silently keep all activations, or wrap steps that nobody asked to wrap.
Data-dependent init and the evaluation/sampling graphs are never wrapped.
"""
import collections

import tensorflow.compat.v1 as tf


MODES = ("none", "recompute", "invertible")
COLLECTION = "memory_saving_gradients_flows"


def check_mode(mode):
    if mode not in MODES:
        raise ValueError("gradient checkpointing mode %r: expected one of %s" % (mode, ", ".join(MODES)))
    return mode


class FlowRecord(object):
    """What `flow` built, for `gradients` and the diagnostics: the mode, the
    op of the custom gradient (the IdentityN the outputs come from), the
    forward ops, each step's forward input and, once the backward pass is
    built, each step's input as the backward pass had it (recomputed or
    rebuilt)."""

    def __init__(self, mode, scope_name):
        self.mode = mode
        self.scope_name = scope_name
        self.op = None
        self.forward_ops = []
        self.step_inputs = []
        self.backward_inputs = {}
        self.looped_inputs = None  # looped.py: a function building both stacks of inputs


def unrolled(mode):
    """A level runner for model.Glow(run_steps=...): unrolled steps whose
    gradient, in the graph built with for_gradients=True, is `mode`'s."""
    check_mode(mode)

    def run_steps(make_step, depth, z, logdet, reverse=False, for_gradients=False):
        steps = [make_step(str(i)) for i in range(depth)]
        if for_gradients and not reverse:
            return flow(steps, z, logdet, mode)
        for step in (reversed(steps) if reverse else steps):
            z, logdet = step(z, logdet, reverse)
        return z, logdet

    return run_steps


def is_coupling_step(step):
    """Whether `step` is tagged with its coupling's parts (model.FlowStep):
    prefix(z, logdet, reverse), nn(z1) -> h, couple(h, z2, logdet, reverse);
    step(z, logdet) = [z1, couple(nn(z1), z2)] of prefix's output."""
    return all(callable(getattr(step, part, None)) for part in ("prefix", "nn", "couple"))


def flow(steps, z, logdet, mode="none"):
    """Run flow steps forward: z, logdet -> z, logdet, with the gradient of `mode`.

    steps: callables step(z, logdet, reverse) -> (z, logdet), each building
    its ops and getting its variables under the current variable scope (as
    `Glow._flow_step` does); with mode 'invertible', step(..., reverse=True)
    must invert step(..., reverse=False). z: [B, H, W, C]; logdet: [B]."""
    check_mode(mode)
    if mode == "none":
        for step in steps:
            z, logdet = step(z, logdet, False)
        return z, logdet

    graph = tf.get_default_graph()
    scope = tf.get_variable_scope()
    record = FlowRecord(mode, scope.name)
    n_ops_before = len(graph.get_operations())

    @tf.custom_gradient
    def checkpointed(z, logdet):
        for step in steps:
            record.step_inputs.append(z)
            z, logdet = step(z, logdet, False)
        z_out = z

        def grad_fn(dz, dlogdet, variables=None):
            return _backward(steps, scope, record, z_out, dz, dlogdet, variables or [])

        return (z, logdet), grad_fn

    z, logdet = checkpointed(z, logdet)
    ops = graph.get_operations()
    record.forward_ops = [op for op in ops[n_ops_before:] if op is not z.op]
    record.op = z.op
    assert z.op.type == "IdentityN" and logdet.op is z.op, "tf.custom_gradient changed: expected one IdentityN"
    tf.add_to_collection(COLLECTION, record)
    return z, logdet


class _ReadCollector(object):
    """A custom getter that passes every variable read through a new identity
    op and remembers it by the name it was asked for (a variable's op name),
    so that tf.gradients can stop at the reads of one recomputed step instead
    of walking every use of the variable's handle in the whole graph."""

    def __init__(self):
        self.reads = collections.OrderedDict()

    def __call__(self, getter, name, *args, **kwargs):
        value = getter(name, *args, **kwargs)
        read = tf.identity(tf.convert_to_tensor(value))
        self.reads.setdefault(name, []).append(read)
        return read


def _recompute(step, scope, z_in, dz, dlogdet, wanted):
    """Gradients of one step, by running it forward again from z_in.

    Returns (d z_in, {variable name: [gradient, ...]}) for the variables in
    `wanted` (op names)."""
    collector = _ReadCollector()
    with tf.variable_scope(scope, reuse=True, custom_getter=collector, auxiliary_name_scope=False):
        z_out, logdet_out = step(z_in, tf.zeros_like(dlogdet), False)
    names, reads = _read_values(collector, wanted)
    grads = tf.gradients([z_out, logdet_out], [z_in] + reads, grad_ys=[dz, dlogdet])
    assert grads[0] is not None, "a flow step's output does not depend on its input"
    by_name = collections.defaultdict(list)
    for name, g in zip(names, grads[1:]):
        if g is not None:
            by_name[name].append(g)
    return grads[0], by_name


def _read_values(collector, wanted):
    """The variable reads a _ReadCollector saw, for the variables in `wanted`
    (op names): (names, reads), one name per read."""
    pairs = [(k, r) for k in collector.reads if k in wanted for r in collector.reads[k]]
    return [k for k, _ in pairs], [r for _, r in pairs]


def _rebuild_coupling_step(step, scope, z_out, dz, dlogdet, wanted):
    """'invertible' backprop of one CouplingStep from its output z_out:
    returns (the rebuilt input, d input, {variable name: [gradient, ...]}).

    The coupling passed z1 through, so z_out's first half is the network's
    input as the forward pass had it: h = nn(z1) is evaluated once, rebuilds
    z2's input (couple's inverse) and carries the gradient (backprop through
    the same ops); the cheap prefix is inverted, then recomputed from the
    rebuilt input for its own gradient."""
    zeros = tf.zeros_like(dlogdet)
    nn_reads, prefix_reads, couple_reads = _ReadCollector(), _ReadCollector(), _ReadCollector()
    with tf.control_dependencies([dz]):
        y = tf.identity(z_out)
    y1, y2 = tf.split(y, 2, axis=3)
    dy1, dy2 = tf.split(dz, 2, axis=3)
    with tf.variable_scope(scope, reuse=True, custom_getter=nn_reads, auxiliary_name_scope=False):
        h = step.nn(y1)
    with tf.variable_scope(scope, reuse=True, auxiliary_name_scope=False):
        x2, _ = step.couple(tf.stop_gradient(h), y2, zeros, True)
        z_in, _ = step.prefix(tf.concat([y1, x2], 3), zeros, True)
    z_in = tf.stop_gradient(z_in)
    with tf.variable_scope(scope, reuse=True, custom_getter=prefix_reads, auxiliary_name_scope=False):
        p, logdet_prefix = step.prefix(z_in, zeros, False)
    _, p2 = tf.split(p, 2, axis=3)
    with tf.variable_scope(scope, reuse=True, custom_getter=couple_reads, auxiliary_name_scope=False):
        y2_again, logdet_couple = step.couple(h, p2, zeros, False)
    # couple: d p2, d h and its variables; nn: d z1 (added to what z1 got
    # directly) and its variables; prefix: d z_in and its variables.
    couple_names, couple_values = _read_values(couple_reads, wanted)
    couple_grads = tf.gradients([y2_again, logdet_couple], [p2, h] + couple_values, grad_ys=[dy2, dlogdet])
    nn_names, nn_values = _read_values(nn_reads, wanted)
    nn_grads = tf.gradients(h, [y1] + nn_values, grad_ys=couple_grads[1])
    dp = tf.concat([dy1 + nn_grads[0], couple_grads[0]], 3)
    prefix_names, prefix_values = _read_values(prefix_reads, wanted)
    prefix_grads = tf.gradients([p, logdet_prefix], [z_in] + prefix_values, grad_ys=[dp, dlogdet])
    by_name = collections.defaultdict(list)
    for name, g in zip(couple_names + nn_names + prefix_names, couple_grads[2:] + nn_grads[1:] + prefix_grads[1:]):
        if g is not None:
            by_name[name].append(g)
    return z_in, prefix_grads[0], by_name


def step_backward(step, scope, mode, z_kept, z_next, dz, dlogdet, wanted):
    """The backward pass through one step: returns (its input as the backward
    pass has it, d input, {variable op name: [gradient, ...]}).

    z_kept: the step's input kept by the forward pass ('recompute'); z_next:
    its output, from which 'invertible' rebuilds the input. `scope` is the
    variable scope whose variables the step reads."""
    if mode == "invertible" and is_coupling_step(step):
        return _rebuild_coupling_step(step, scope, z_next, dz, dlogdet, wanted)
    # The control dependency holds this step's recomputation (and, for
    # 'invertible', its inverse) back until the gradient of its output exists:
    # the backward pass has reached it.
    with tf.control_dependencies([dz]):
        z_in = tf.identity(z_kept if mode == "recompute" else z_next)
    if mode == "invertible":
        with tf.variable_scope(scope, reuse=True, auxiliary_name_scope=False):
            z_in, _ = step(z_in, tf.zeros_like(dlogdet), True)
    # Gradients must flow only through the recomputed step, never back
    # through the inverse that rebuilt its input.
    z_in = tf.stop_gradient(z_in)
    dz, grads = _recompute(step, scope, z_in, dz, dlogdet, wanted)
    return z_in, dz, grads


def sum_gradients(grads):
    """One tensor for a list of gradients of one variable (None for none)."""
    return None if not grads else grads[0] if len(grads) == 1 else tf.add_n(grads)


def _backward(steps, scope, record, z_out, dz, dlogdet, variables):
    """The custom gradient of `flow`: steps last to first, each recomputed from
    its kept ('recompute') or rebuilt ('invertible') input."""
    trainable = set(v.op.name for v in tf.trainable_variables())
    wanted = set(v.op.name for v in variables) & trainable
    var_grads = collections.defaultdict(list)
    z_next = z_out
    for i in reversed(range(len(steps))):
        kept = record.step_inputs[i] if record.mode == "recompute" else None
        z_next, dz, grads = step_backward(steps[i], scope, record.mode, kept, z_next, dz, dlogdet, wanted)
        record.backward_inputs[i] = z_next
        for name, g in grads.items():
            var_grads[name].extend(g)
    # d logdet_in = d logdet_out: each step adds to the log-det it is given.
    return (dz, dlogdet), [sum_gradients(var_grads.get(v.op.name)) for v in variables]


def _flows_under(tensor):
    """The checkpointed flows that `tensor` depends on."""
    records = {r.op.name: r for r in tf.get_collection(COLLECTION) if r.op.graph is tensor.graph}
    if not records:
        return []
    seen = set()
    stack = [tensor.op]
    found = []
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.name in records:
            found.append(records[op.name])
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return found


def gradients(loss, params, mode="none"):
    """d loss / d params with the flow's gradients of `mode`.

    The loss must have been built with the same mode (`Glow.losses(...,
    checkpointing=mode)`); the gradients themselves come from the custom
    gradients that graph holds, so this is tf.gradients after that check
    (dense tensors: see below)."""
    check_mode(mode)
    built = sorted(set(r.mode for r in _flows_under(loss)))
    if mode == "none" and built:
        raise ValueError("gradients(mode='none') of a loss whose flow was built with checkpointing %s: "
                         "pass that mode, or build the loss with checkpointing='none'" % ", ".join(built))
    if mode != "none" and built != [mode]:
        raise ValueError("gradients(mode=%r) of a loss whose flow was built with checkpointing %s: build it "
                         "with Glow.losses(..., checkpointing=%r)" % (mode, ", ".join(built) or "'none'", mode))
    # A looped flow's plain backprop gives its stacked variables the rows
    # each iteration gathered (IndexedSlices): the optimizers want them dense.
    grads = tf.gradients(loss, params)
    return [tf.math.unsorted_segment_sum(g.values, g.indices, tf.dimension_value(p.get_shape()[0]))
            if isinstance(g, tf.IndexedSlices) else g for g, p in zip(grads, params)]


def reconstruction_error(loss):
    """How far the inputs the backward pass used are from the forward ones:
    max over every step of the checkpointed flows under `loss` of
    max|backward input - forward input| / max|forward input|, a float64
    scalar tensor. Zero for 'recompute'; for 'invertible' the float rounding
    of the inverses, which grows from the level's output down to its first
    step (an affine coupling's inverse multiplies the error it is given by
    1/scale), and which the gradients inherit.

    Build `gradients(loss, ...)` first. A diagnostic: running it computes the
    backward pass and keeps the forward inputs, so run it apart from the
    training step."""
    errors = []
    for record in _flows_under(loss):
        if record.looped_inputs is not None:
            forward, backward = [tf.cast(t, tf.float64) for t in record.looped_inputs()]
            diff = tf.reduce_max(tf.abs(backward - forward), axis=[1, 2, 3, 4])  # [depth]
            errors.append(tf.reduce_max(diff / tf.maximum(tf.reduce_max(tf.abs(forward), axis=[1, 2, 3, 4]), 1e-30)))
            continue
        if not record.backward_inputs:
            raise ValueError("reconstruction_error: build the gradients of this loss first")
        for i, z_in in sorted(record.backward_inputs.items()):
            forward = tf.cast(record.step_inputs[i], tf.float64)
            diff = tf.reduce_max(tf.abs(tf.cast(z_in, tf.float64) - forward))
            errors.append(diff / tf.maximum(tf.reduce_max(tf.abs(forward)), 1e-30))
    if not errors:
        raise ValueError("reconstruction_error: the loss has no checkpointed flow")
    return tf.reduce_max(tf.stack(errors))
