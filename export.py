"""A trained run for use outside this program (train.py --export DIR): a SavedModel (TF Serving, ModelArts'
real-time inference, `tf.saved_model.load`) and frozen GraphDefs (openai/glow's demo form, what Ascend's ATC turns
into an offline model), from a checkpoint and the config it carries, with the raw weights or their Polyak average.

Four functions, each a SavedModel signature and a frozen graph DIR/frozen/<name>.pb, with these tensors (y only for a
class-conditional model, `--ycond`; N the batch: any in the SavedModel, --export_batch in the frozen graphs):

    bits_per_dim  x uint8 [N, H, W, C], noise float32 [N, H, W, C] in [0, 1/2^n_bits_x) (the dequantisation draw;
                  the bin centres 0.5/2^n_bits_x for a deterministic figure), y int32 [N]
                  -> bits_per_dim float32 [N]
    encode        x, y -> z float32 [N, D] (every level's eps, first level first, of x at its bin centres)
    decode        z, y -> images uint8 [N, H, W, C] (decode(encode(x)) is x)
    sample        temperature float32 [N], y -> images uint8 [N, H, W, C]

A tensor's name in a frozen graph is the key above (`x:0`, `bits_per_dim:0`); DIR/signatures.json lists them with
dtypes and shapes. Whatever depends only on the weights is computed here: the weights are constants and so are the
1x1 convolutions' W^-1 and log|det W| (tfops.conv1x1_constant), so no graph holds a determinant, an inverse or a
float64 op, whichever permutation was trained. The coupling networks use plain tf.nn.conv2d (kernels.py).
"""
import json
import os

import numpy as np
import tensorflow.compat.v1 as tf

import checkpoints
import model as glow_model
import optim
import tfops
import utils

FUNCTIONS = ("bits_per_dim", "encode", "decode", "sample")


def export(prefix, saved_config, out_dir, weights="raw", batch=1):
    """Write out_dir/saved_model/, out_dir/frozen/<function>.pb and out_dir/signatures.json from checkpoint
    `prefix` and its run config (checkpoints.saved_config). Returns {function: (inputs, outputs)} of the frozen
    graphs, each {name: [dtype, shape]}."""
    utils.check_choice("weights", weights, ("raw", "polyak"))
    if batch < 1:
        raise ValueError("--export_batch %d: must be >= 1 (the frozen graphs' static batch)" % batch)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise ValueError("--export %s is not empty: give a new folder" % out_dir)
    architecture = dict((k, saved_config[k]) for k in glow_model.ARCHITECTURE)
    read = _checkpoint_values(prefix, weights)
    glow = glow_model.Glow(kernels="plain", conv1x1_constants=_conv1x1_constants(architecture, read), **architecture)
    signatures, frozen = {}, {}
    os.makedirs(os.path.join(out_dir, "frozen"), exist_ok=True)
    for name in FUNCTIONS:
        graph, inputs, outputs = _function_graph(glow, read, name, batch)
        graph_def = tf.graph_util.extract_sub_graph(graph.as_graph_def(), [t.op.name for t in outputs.values()])
        utils.atomic_write_bytes(os.path.join(out_dir, "frozen", name + ".pb"), graph_def.SerializeToString())
        frozen[name] = (_describe(inputs), _describe(outputs))
    graph = tf.Graph()
    with graph.as_default():
        getter = _constant_getter(read)
        for name in FUNCTIONS:
            with tf.name_scope(name):
                inputs, outputs = _build_function(glow, getter, name, None)
            signatures[name] = tf.saved_model.signature_def_utils.build_signature_def(
                inputs=dict((k, tf.saved_model.utils.build_tensor_info(t)) for k, t in inputs.items()),
                outputs=dict((k, tf.saved_model.utils.build_tensor_info(t)) for k, t in outputs.items()),
                method_name=tf.saved_model.signature_constants.PREDICT_METHOD_NAME)
        builder = tf.saved_model.Builder(os.path.join(out_dir, "saved_model"))
        with tf.Session(graph=graph) as sess:
            builder.add_meta_graph_and_variables(sess, [tf.saved_model.tag_constants.SERVING],
                                                 signature_def_map=signatures, strip_default_attrs=True)
        builder.save()
    described = {"checkpoint": os.path.abspath(prefix), "weights": weights, "frozen_batch": batch,
                 "image_shape": list(architecture["image_shape"]), "n_bits_x": architecture["n_bits_x"],
                 "latent_size": int(sum(np.prod(s) for s in glow.eps_shapes)),
                 "functions": dict((name, {"inputs": i, "outputs": o}) for name, (i, o) in frozen.items())}
    utils.atomic_write_bytes(os.path.join(out_dir, "signatures.json"),
                             (json.dumps(described, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return frozen


def _describe(tensors):
    """{key: "dtype[shape]"}, e.g. "uint8[1,32,32,1]" (-1: any size)."""
    return dict((k, "%s[%s]" % (t.dtype.name, ",".join(str(-1 if d is None else d) for d in t.get_shape().as_list())))
                for k, t in tensors.items())


def _function_graph(glow, read, name, batch):
    """A graph of one function alone, its tensors named by their keys at the top level (a frozen graph's)."""
    graph = tf.Graph()
    with graph.as_default():
        inputs, outputs = _build_function(glow, _constant_getter(read), name, batch)
    return graph, inputs, outputs


def _build_function(glow, getter, name, batch):
    """({key: placeholder}, {key: output}) of function `name`, built in the current graph and name scope."""
    h, w, c = glow.image_shape
    inputs = {}

    def placeholder(key, dtype, shape):
        inputs[key] = tf.placeholder(dtype, [batch] + shape, name=key)
        return inputs[key]

    centre = 0.5 / glow.n_bins
    y = placeholder("y", tf.int32, []) if glow.ycond else None
    if name in ("bits_per_dim", "encode"):
        x = glow.preprocess(placeholder("x", tf.uint8, [h, w, c]))
        x += placeholder("noise", glow.dtype, [h, w, c]) if name == "bits_per_dim" else centre
        stats, enc = glow.stats(x, y, custom_getter=getter)
        if name == "bits_per_dim":
            return inputs, {"bits_per_dim": tf.identity(stats["bits_x"], name="bits_per_dim")}
        return inputs, {"z": tf.identity(glow.flatten(enc.eps), name="z")}
    if name == "decode":
        z = placeholder("z", glow.dtype, [int(sum(np.prod(s) for s in glow.eps_shapes))])
        images = glow.postprocess(glow.decode(glow.unflatten(z), y, custom_getter=getter))
    else:
        temperature = placeholder("temperature", tf.float32, [])
        labels = y if y is not None else tf.zeros(tf.shape(temperature), tf.int32)
        images = glow.sample(labels, temperature, custom_getter=getter)
    return inputs, {"images": tf.identity(images, name="images")}


def _checkpoint_values(prefix, weights):
    """read(name, shape, trainable): the NumPy value of model variable `name` in checkpoint `prefix`: the
    variable's, or for weights="polyak" and a trainable float variable its Polyak average `optim/<name>/ema`."""
    reader = tf.train.load_checkpoint(prefix)
    have = reader.get_variable_to_shape_map()

    def read(name, shape, trainable):
        key = optim.average_key(name) if weights == "polyak" and trainable else name
        if key not in have or list(have[key]) != list(shape):  # (a run without Polyak averages lacks optim/...)
            checkpoints.check_holds(prefix, {key: shape}, left_out=lambda k: True)  # raises, naming it
        return np.asarray(reader.get_tensor(key))

    return read


def _constant_getter(read):
    """A custom getter giving each model variable as a constant of its checkpoint value, one per graph."""
    made = {}

    def get(getter, name, *args, **kwargs):
        if name not in made:
            dtype = tf.as_dtype(kwargs.get("dtype") or tf.float32)
            shape = kwargs.get("shape")
            shape = tf.TensorShape(shape if shape is not None else np.shape(kwargs.get("initializer"))).as_list()
            trainable = kwargs.get("trainable") is not False and dtype.is_floating
            made[name] = tf.constant(read(name, shape, trainable).astype(dtype.as_numpy_dtype))
        return made[name]

    return get


def _conv1x1_constants(architecture, read):
    """{scope name: (W, W^-1, log|det W|)} of every 1x1 convolution of the trained model, computed as the
    training graph computes them (float64 inverse and log-determinant, tfops.invconv/invconv_lu), in a graph of
    the forward pass that is run for them alone."""
    if architecture["permutation"] not in ("invconv", "invconv_lu"):
        return None
    graph = tf.Graph()
    with graph.as_default():
        glow = glow_model.Glow(kernels="plain", **architecture)
        x = tf.placeholder(glow.dtype, [1] + list(glow.image_shape))
        glow.encode(x, tf.zeros([1], tf.int32), custom_getter=_constant_getter(read))
        records = tf.get_collection(tfops.CONV1X1)
        fetches = [(w, inverse(), log_det) for _, w, inverse, log_det in records]
        with tf.Session(graph=graph) as sess:
            values = sess.run(fetches)
    return dict((scope, tuple(np.asarray(v) for v in value)) for (scope, _, _, _), value in zip(records, values))
