"""Gradients for train.py, by --gradient_checkpointing mode.

Only 'none' (plain tf.gradients) is implemented in this version. openai/glow's
default, 1 ('recompute': recompute each flow step in the backward pass), needs
a tf.custom_gradient wrapper around the flow steps (tf.contrib.graph_editor,
which openai/glow used, is gone in TF 2.x, and tf.recompute_grad saves no
memory in TF 2.x graph mode); 'invertible' (rebuild activations from the
inverse) likewise. Until then those modes fall back to plain gradients and say
so once, on stderr and in the run's config line (`gradient_checkpointing_used`).
"""
import sys

import tensorflow.compat.v1 as tf

MODES = ("none", "recompute", "invertible")
IMPLEMENTED = ("none",)


def effective_mode(mode):
    """The mode that `gradients` will really use for a requested one."""
    if mode not in MODES:
        raise ValueError("gradient checkpointing mode %r: expected one of %s" % (mode, ", ".join(MODES)))
    return mode if mode in IMPLEMENTED else "none"


def gradients(loss, params, mode="none"):
    """d loss / d params under `mode` (see the module docstring)."""
    used = effective_mode(mode)
    if used != mode:
        sys.stderr.write("gradient checkpointing %r is not implemented yet: using plain gradients "
                         "(more memory, same result)\n" % mode)
    return tf.gradients(loss, params)
