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
    match plain ones to float tolerance, not bit for bit; it costs one more
    evaluation of each step (the inverse) than 'recompute'.

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

The graph must be built for the mode (`Glow.losses(..., checkpointing=mode)`)
and `gradients(loss, params, mode)` checks that it was: a mismatch would
silently keep all activations, or wrap steps that nobody asked to wrap.
Data-dependent init and the evaluation/sampling graphs are never wrapped.
"""
import collections

import tensorflow.compat.v1 as tf

MODES = ("none", "recompute", "invertible")
_COLLECTION = "memory_saving_gradients_flows"


def effective_mode(mode):
    """The mode that `gradients` uses for a requested one (all are implemented;
    kept for train.py, which records it in the run's config line)."""
    if mode not in MODES:
        raise ValueError("gradient checkpointing mode %r: expected one of %s" % (mode, ", ".join(MODES)))
    return mode


class _Flow(object):
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


def flow(steps, z, logdet, mode="none"):
    """Run flow steps forward: z, logdet -> z, logdet, with the gradient of `mode`.

    steps: callables step(z, logdet, reverse) -> (z, logdet), each building
    its ops and getting its variables under the current variable scope (as
    `Glow._flow_step` does); with mode 'invertible', step(..., reverse=True)
    must invert step(..., reverse=False). z: [B, H, W, C]; logdet: [B]."""
    effective_mode(mode)
    if mode == "none":
        for step in steps:
            z, logdet = step(z, logdet, False)
        return z, logdet

    graph = tf.get_default_graph()
    scope = tf.get_variable_scope()
    record = _Flow(mode, scope.name)
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
    tf.add_to_collection(_COLLECTION, record)
    return z, logdet


class _ReadCollector(object):
    """A custom getter that passes every variable read through a new identity
    op and remembers it by variable name, so that tf.gradients can stop at the
    reads of one recomputed step instead of walking every use of the
    variable's handle in the whole graph."""

    def __init__(self):
        self.reads = collections.OrderedDict()

    def __call__(self, getter, name, *args, **kwargs):
        value = getter(name, *args, **kwargs)
        read = tf.identity(tf.convert_to_tensor(value))
        self.reads.setdefault(value.name, []).append(read)
        return read


def _recompute(step, scope, z_in, dz, dlogdet, wanted):
    """Gradients of one step, by running it forward again from z_in.

    Returns (d z_in, {variable name: [gradient, ...]}) for the variables in
    `wanted` (names)."""
    collector = _ReadCollector()
    with tf.variable_scope(scope, reuse=True, custom_getter=collector, auxiliary_name_scope=False):
        z_out, logdet_out = step(z_in, tf.zeros_like(dlogdet), False)
    names = [k for k in collector.reads if k in wanted]
    reads = [r for k in names for r in collector.reads[k]]
    grads = tf.gradients([z_out, logdet_out], [z_in] + reads, grad_ys=[dz, dlogdet])
    assert grads[0] is not None, "a flow step's output does not depend on its input"
    by_name = collections.defaultdict(list)
    i = 1
    for k in names:
        for _ in collector.reads[k]:
            if grads[i] is not None:
                by_name[k].append(grads[i])
            i += 1
    return grads[0], by_name


def _backward(steps, scope, record, z_out, dz, dlogdet, variables):
    """The custom gradient of `flow`: steps last to first, each recomputed from
    its kept ('recompute') or rebuilt ('invertible') input."""
    trainable = set(v.name for v in tf.trainable_variables())
    wanted = set(v.name for v in variables) & trainable
    var_grads = collections.defaultdict(list)
    z_next = z_out
    for i in reversed(range(len(steps))):
        # The control dependency holds this step's recomputation (and, for
        # 'invertible', its inverse) back until the gradient of its output
        # exists: the backward pass has reached it.
        with tf.control_dependencies([dz]):
            if record.mode == "recompute":
                z_in = tf.identity(record.step_inputs[i])
            else:
                z_held = tf.identity(z_next)
        if record.mode == "invertible":
            with tf.variable_scope(scope, reuse=True, auxiliary_name_scope=False):
                z_in, _ = steps[i](z_held, tf.zeros_like(dlogdet), True)
        # Gradients must flow only through the recomputed step, never back
        # through the inverse that rebuilt its input.
        z_in = tf.stop_gradient(z_in)
        record.backward_inputs[i] = z_in
        dz, grads = _recompute(steps[i], scope, z_in, dz, dlogdet, wanted)
        for name, g in grads.items():
            var_grads[name].extend(g)
        z_next = z_in
    variable_grads = []
    for v in variables:
        g = var_grads.get(v.name)
        variable_grads.append(None if not g else g[0] if len(g) == 1 else tf.add_n(g))
    # d logdet_in = d logdet_out: each step adds to the log-det it is given.
    return (dz, dlogdet), variable_grads


def _flows_under(tensor):
    """The checkpointed flows that `tensor` depends on."""
    records = {r.op.name: r for r in tf.get_collection(_COLLECTION) if r.op.graph is tensor.graph}
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
    gradients that graph holds, so this is tf.gradients after that check."""
    effective_mode(mode)
    built = sorted(set(r.mode for r in _flows_under(loss)))
    if mode == "none" and built:
        raise ValueError("gradients(mode='none') of a loss whose flow was built with checkpointing %s: "
                         "pass that mode, or build the loss with checkpointing='none'" % ", ".join(built))
    if mode != "none" and built != [mode]:
        raise ValueError("gradients(mode=%r) of a loss whose flow was built with checkpointing %s: build it "
                         "with Glow.losses(..., checkpointing=%r)" % (mode, ", ".join(built) or "'none'", mode))
    return tf.gradients(loss, params)


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
        if not record.backward_inputs:
            raise ValueError("reconstruction_error: build the gradients of this loss first")
        for i, z_in in sorted(record.backward_inputs.items()):
            forward = tf.cast(record.step_inputs[i], tf.float64)
            diff = tf.reduce_max(tf.abs(tf.cast(z_in, tf.float64) - forward))
            errors.append(diff / tf.maximum(tf.reduce_max(tf.abs(forward)), 1e-30))
    if not errors:
        raise ValueError("reconstruction_error: the loss has no checkpointed flow")
    return tf.reduce_max(tf.stack(errors))
