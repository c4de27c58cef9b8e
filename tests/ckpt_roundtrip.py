"""Save a tiny Glow's checkpoint on this stack, or restore one and evaluate.

Run by test_checkpoint_compat.py under each stack's interpreter:
    python ckpt_roundtrip.py save DIR   # init, perturb, save, write DIR/bits_<tag>.json
    python ckpt_roundtrip.py eval DIR   # restore, write DIR/bits_<tag>.json
Both evaluate bits/dim without dequantisation noise on one fixed batch."""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import model as glow_model  # noqa: E402
from flowcheck import randomize_variables  # noqa: E402  (tests/, this script's folder)


def main(mode, directory):
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(8, 8, 8, 2)).astype(np.uint8)
    glow = glow_model.Glow((8, 8, 2), n_levels=2, depth=2, width=8, permutation="invconv_lu",
                           coupling="affine", learntop=True)
    x = tf.constant(images)
    y = tf.zeros([8], tf.int32)
    init = glow.init_op(x, y)
    bits = glow.losses(x, y, dequantize=False)["bits_x"]
    saver = tf.train.Saver()
    path = os.path.join(directory, "model.ckpt")
    with tf.Session() as sess:
        if mode == "save":
            sess.run(tf.global_variables_initializer())
            sess.run(init)
            randomize_variables(sess, rng, scale=0.05)
            saver.save(sess, path, write_meta_graph=False)
        else:
            saver.restore(sess, path)
        value = sess.run(bits)
    tag = "tf%s_%s" % (tf.VERSION, mode)
    with open(os.path.join(directory, "bits_%s.json" % tag), "w") as f:
        json.dump({"bits_x": value.tolist(), "version": tf.VERSION}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
