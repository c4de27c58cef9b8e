"""Runs an export (export.py) the way a user's program does, with TensorFlow alone: started by tests/test_export.py
in an isolated interpreter (python -I, another folder) whose sys.path does not hold this project.

    python -I export_loader.py EXPORT_DIR INPUTS.npz OUTPUTS.npz

INPUTS.npz: x (uint8 images), noise (their dequantisation draws), y (labels), temperature. OUTPUTS.npz, for each
of the SavedModel ("saved_") and the frozen graphs ("frozen_"): bits_per_dim, z, decoded (decode(encode(x))) and
images (sample), plus the op types of the frozen graphs (frozen_ops) and the TensorFlow version."""
import importlib.util
import json
import os
import sys

import numpy as np
import tensorflow.compat.v1 as v1


def saved_model(path, feeds):
    """{function: its outputs} from the SavedModel, through the stack's own loader: on TF 2.x (eager)
    tf.saved_model.load, which compat.v1 names saved_model.load_v2."""
    out = {}
    if v1.VERSION.startswith("1."):
        with v1.Session(graph=v1.Graph()) as sess:
            meta = v1.saved_model.loader.load(sess, ["serve"], path)
            for name, feed in feeds.items():
                sig = meta.signature_def[name]
                tensors = dict((k, sess.graph.get_tensor_by_name(v.name)) for k, v in sig.outputs.items())
                out[name] = sess.run(tensors, dict((sig.inputs[k].name, v) for k, v in feed.items()))
        return out
    loaded = v1.saved_model.load_v2(path)
    for name, feed in feeds.items():
        result = loaded.signatures[name](**dict((k, v1.constant(v)) for k, v in feed.items()))
        out[name] = dict((k, t.numpy()) for k, t in result.items())
    return out


def frozen(folder, feeds, batch):
    """{function: its outputs} from the frozen graphs, fed `batch` images at a time."""
    out = {}
    for name, feed in feeds.items():
        graph_def = read_graph_def(folder, name)
        with v1.Graph().as_default() as graph:
            v1.import_graph_def(graph_def, name="")
            outputs = dict((k, graph.get_tensor_by_name(k + ":0")) for k in ("bits_per_dim", "z", "images")
                           if k + ":0" in [o.name for op in graph.get_operations() for o in op.outputs])
            n = len(next(iter(feed.values())))
            with v1.Session(graph=graph) as sess:
                parts = [sess.run(outputs, dict((k + ":0", v[i:i + batch]) for k, v in feed.items()))
                         for i in range(0, n, batch)]
        out[name] = dict((k, np.concatenate([p[k] for p in parts])) for k in outputs)
    return out


def read_graph_def(folder, name):
    graph_def = v1.GraphDef()
    with open(os.path.join(folder, name + ".pb"), "rb") as f:
        graph_def.ParseFromString(f.read())
    return graph_def


def main(export_dir, inputs, outputs):
    assert importlib.util.find_spec("tfops") is None and importlib.util.find_spec("export") is None, sys.path
    data = np.load(inputs)
    info = json.load(open(os.path.join(export_dir, "signatures.json")))
    labels = {"y": data["y"]} if "y" in info["functions"]["encode"]["inputs"] else {}
    results = {"tf_version": np.array(v1.VERSION)}
    for kind in ("saved", "frozen"):
        run = ((lambda feeds: saved_model(os.path.join(export_dir, "saved_model"), feeds)) if kind == "saved" else
               (lambda feeds: frozen(os.path.join(export_dir, "frozen"), feeds, info["frozen_batch"])))
        first = run({"bits_per_dim": dict(labels, x=data["x"], noise=data["noise"]),
                     "encode": dict(labels, x=data["x"]),
                     "sample": dict(labels, temperature=data["temperature"])})
        z = first["encode"]["z"]
        decoded = run({"decode": dict(labels, z=z)})["decode"]["images"]
        results.update([(kind + "_bits_per_dim", first["bits_per_dim"]["bits_per_dim"]), (kind + "_z", z),
                        (kind + "_decoded", decoded), (kind + "_images", first["sample"]["images"])])
    results["frozen_ops"] = np.array(frozen_ops(os.path.join(export_dir, "frozen"), info["functions"]))
    np.savez(outputs, **results)


def frozen_ops(folder, names):
    """Every "OpType:dtype,..." (the op's type attributes) in the frozen graphs."""
    ops = set()
    for name in names:
        ops.update("%s:%s" % (node.op, ",".join(sorted(
            v1.as_dtype(a.type).name for a in node.attr.values() if a.WhichOneof("value") == "type")))
            for node in read_graph_def(folder, name).node)
    return sorted(ops)


if __name__ == "__main__":
    main(*sys.argv[1:])
