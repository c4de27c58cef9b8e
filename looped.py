"""--loop_steps: a level's flow steps as one tf.while_loop over one copy of the step. Graph memory follows the ops:
an unrolled level holds `depth` copies of the step's ops (and of their gradient's), a looped one holds one.

The steps' variables are the level's stacked ones (stacked.py, the layout every graph uses): iteration i reads row i.

`looped_steps(mode)`'s gradient: 'none' differentiates through the loop (TF keeps every iteration's activations);
'recompute' keeps each step's input in a TensorArray, 'invertible' only the level's output, and the backward pass is a
second loop, last step to first, over memory_saving_gradients.step_backward. The data-dependent init is a loop too,
whose iterations collect the step's statistics (stacked.InitValue), assigned after the loop.
"""
import tensorflow.compat.v1 as tf

import memory_saving_gradients as msg
import stacked
import tfops

def looped_steps(mode="none"):
    """A model.Glow run_steps of looped steps, whose forward pass has `mode`'s gradient (the model's runner for every
    graph with 'none', Glow.with_steps' for the training loss with the others)."""
    msg.check_mode(mode)

    def run_steps(make_step, depth, z, logdet, reverse=False):
        params, constants = stacked.level_variables(make_step, depth, z)
        level = _LoopedLevel(make_step(stacked.STEP_SCOPE), params, constants, depth)
        if tfops.in_ddi_init():
            return level.ddi(z, logdet)
        if mode != "none" and not reverse:
            return level.checkpointed(z, logdet, mode)
        # Differentiable forward (each gather gives its row of the gradient), or the inverse (never differentiated).
        return tuple(level.forward(z, logdet, level.reads(), True, backwards=reverse)[:2])

    return run_steps


def _loop(n, body, loop_vars, backwards=False, back_prop=True):
    """for i in range(n) (or reversed): loop_vars = body(i, *loop_vars), as one tf.while_loop; returns the final
    loop_vars. One iteration at a time: overlapping iterations would hold several steps' internals at once."""
    def advance(i, *values):
        return [i - 1 if backwards else i + 1] + list(body(i, *values))

    return tf.while_loop(lambda i, *_: i >= 0 if backwards else i < n, advance,
                         [tf.constant(n - 1 if backwards else 0)] + list(loop_vars),
                         back_prop=back_prop, parallel_iterations=1)[1:]


class _LoopedLevel(object):
    """`depth` copies of `step` as loops. params: {name: [depth, ...] variable or tensor} of the trainable float
    variables (differentiated), constants: the others."""

    def __init__(self, step, params, constants, depth):
        self.step, self.params, self.depth, self.variables = step, params, depth, dict(params, **constants)
        for name, v in self.variables.items():
            if v.get_shape().ndims is None or tf.dimension_value(v.get_shape()[0]) != depth:
                raise ValueError("looped flow: variable %s has shape %s, expected [depth %d, ...]"
                                 % (name, v.get_shape(), depth))
        self.scope = tf.get_variable_scope()
        self.prefix = self.scope.name + "/" + stacked.STEP_SCOPE + "/"
        self.names = sorted(params)
        # One read per variable, which every iteration indexes: an alias of its buffer, not a copy.
        self.fixed = {name: tf.convert_to_tensor(v) for name, v in constants.items()}

    def in_step(self, i, stacks, recorded=None):
        """The variable scope in which the step reads row i of stacks (and of the constants): stacked.Stacks.scope."""
        return stacked.Stacks(dict(stacks, **self.fixed), self.depth, self.scope).scope(i, recorded)

    def reads(self):
        return {name: tf.convert_to_tensor(self.params[name]) for name in self.names}

    def forward(self, z, logdet, stacks, back_prop, kept=(), backwards=False):
        """The steps from z (inverted, last to first, if backwards), each input written to kept: [z, logdet] + kept."""
        def body(i, z, logdet, *kept):
            kept = [ta.write(i, z) for ta in kept]
            with self.in_step(i, stacks):
                z, logdet = self.step(z, logdet, backwards)
            return [z, logdet] + kept

        return _loop(self.depth, body, [z, logdet] + list(kept), backwards, back_prop)

    def ddi(self, z, logdet):
        """The data-dependent init pass (paper 3.1): each iteration's statistics leave the loop as one flat row,
        assigned to the step's rows of the variables after the loop, before z and logdet return."""
        recorded, stacks = [], self.reads()

        def body(i, z, logdet, rows):
            del recorded[:]
            with self.in_step(i, stacks, recorded):
                z, logdet = self.step(z, logdet, False)
            if not recorded:
                raise ValueError("looped flow: its step computes no data-dependent initial value")
            row = tf.concat([tf.reshape(tf.cast(value, z.dtype), [-1]) for _, value in recorded], axis=0)
            return z, logdet, rows.write(i, row)

        z, logdet, rows = _loop(self.depth, body, [z, logdet, tf.TensorArray(z.dtype, size=self.depth)],
                                back_prop=False)
        rows = rows.stack()  # [depth, the statistics' total size]
        values, offset = {}, 0
        for name, value in recorded:
            size = value.get_shape().num_elements()
            values[name] = tf.reshape(rows[:, offset:offset + size], [self.depth] + value.get_shape().as_list())
            offset += size
        return stacked.assign_init(self.variables, values, z, logdet)

    def checkpointed(self, z, logdet, mode):
        """Forward with the gradient of 'recompute' or 'invertible': a loop over step_backward, last step to first, into
        the variables' gradient stacks. Its custom gradient takes the variables' reads, so its gradients reach them."""
        record = LoopedRecord(mode, self, z, logdet)
        reads = self.reads()

        @tf.custom_gradient
        def checkpointed(z, logdet, *reads):
            record.stacks = stacks = dict(zip(self.names, reads))
            kept = [self.arrays(z)] if mode == "recompute" else []
            z_out, logdet, *kept = self.forward(z, logdet, stacks, False, kept)

            def grad_fn(dz, dlogdet, variables=None):
                grads = self.backward(mode, stacks, kept, z_out, dz, dlogdet)
                # TF 2.x lists the variables behind the stacked reads; their gradients went to `reads`.
                return (grads, [None] * len(variables)) if variables else grads

            return (z_out, logdet), grad_fn

        return msg.register(record, *checkpointed(z, logdet, *[reads[name] for name in self.names]))

    def arrays(self, z):
        """A TensorArray for each step's input (or output), like z."""
        return tf.TensorArray(z.dtype, size=self.depth, element_shape=z.get_shape())

    def backward(self, mode, stacks, kept, z_out, dz, dlogdet):
        """The backward loop: [d z_in, d logdet_in] + each param's gradient stack."""
        wanted = set(self.prefix + name for name in self.names)

        def body(i, z_next, dz, *grad_arrays):
            with self.in_step(i, stacks) as step_scope:
                z_next, dz, grads = msg.step_backward(self.step, step_scope, mode, kept[0].read(i) if kept else None,
                                                      z_next, dz, dlogdet, wanted)
            grads = [msg.sum_gradients(grads.get(self.prefix + name)) for name in self.names]
            return [z_next, dz] + [ta.write(i, g if g is not None else tf.zeros(ta.element_shape, ta.dtype))
                                   for ta, g in zip(grad_arrays, grads)]

        grad_arrays = [tf.TensorArray(stacks[name].dtype, size=self.depth, element_shape=stacks[name].get_shape()[1:])
                       for name in self.names]
        out = _loop(self.depth, body, [z_out, dz] + grad_arrays, backwards=True, back_prop=False)
        # d logdet_in = d logdet_out: each step adds to the log-det it is given.
        return [out[1], dlogdet] + [ta.stack() for ta in out[2:]]


class LoopedRecord(msg.FlowRecord):
    """A checkpointed looped level: the level, its input, and the variables' stacked reads its loops use (`stacks`,
    set when the forward loop is built)."""

    def __init__(self, mode, level, z_in, logdet_in):
        super(LoopedRecord, self).__init__(mode)
        self.level, self.z_in, self.logdet_in, self.stacks = level, z_in, logdet_in, None

    def both_inputs(self):
        """[depth, ...] stacks of each step's input from the forward pass and as the backward pass has it (the same for
        'recompute'; the steps' inverses from the level's output for 'invertible'), for msg.reconstruction_error."""
        level, z_in = self.level, self.z_in
        forward_inputs = level.forward(z_in, self.logdet_in, self.stacks, False, [level.arrays(z_in)])[2].stack()
        if self.mode == "recompute":
            return forward_inputs, forward_inputs
        rebuilt = level.forward(self.op.inputs[0], self.logdet_in, self.stacks, False, [level.arrays(z_in)],
                                backwards=True)
        # Row i, written before each inverse, is step i's output (step i+1's input); the last inverse gives step 0's.
        return forward_inputs, tf.concat([rebuilt[0][None], rebuilt[2].stack()[:-1]], axis=0)
