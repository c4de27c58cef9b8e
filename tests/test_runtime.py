"""runtime.py: session configs, backend choice, and the wiring of the Horovod
and HCCL collectives, checked against fake horovod / npu_bridge modules put
in sys.modules (neither can be installed here)."""
import json
import os
import platform
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

tf.disable_v2_behavior()

RewriterConfig = type(tf.ConfigProto().graph_options.rewrite_options)


def npu_optimizer(config):
    found = [o for o in config.graph_options.rewrite_options.custom_optimizers
             if o.name == "NpuOptimizer"]
    return found[0] if found else None


# ---------------------------------------------------------------- fakes

def hide(monkeypatch, *modules):
    """Make `import m` raise ImportError for each module m."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def install_fake_horovod(monkeypatch, rank=1, size=2, local_rank=1):
    """horovod.tensorflow whose allreduce multiplies by 1 (so a mean is the
    input only if nobody divides) and whose broadcast returns value + 1."""
    calls = []
    hvd = types.ModuleType("horovod.tensorflow")
    hvd.Average, hvd.Sum = "Average", "Sum"
    hvd.init = lambda: calls.append(("init",))
    hvd.rank = lambda: rank
    hvd.size = lambda: size
    hvd.local_rank = lambda: local_rank
    hvd.shutdown = lambda: calls.append(("shutdown",))

    def allreduce(tensor, average=None, op=None):
        calls.append(("allreduce", op))
        return tensor * 1

    def broadcast(tensor, root_rank, name=None):
        calls.append(("broadcast", root_rank))
        return tensor + 1

    hvd.allreduce, hvd.broadcast = allreduce, broadcast
    package = types.ModuleType("horovod")
    package.tensorflow = hvd
    monkeypatch.setitem(sys.modules, "horovod", package)
    monkeypatch.setitem(sys.modules, "horovod.tensorflow", hvd)
    return calls


def install_fake_npu_bridge(monkeypatch):
    """npu_bridge.estimator.npu_ops (system init/shutdown recorded when run)
    and npu_bridge.hccl.hccl_ops (allreduce multiplies by 1; broadcast
    returns each value + 1)."""
    calls = []

    def recorded(what):
        def fn():
            calls.append(("run", what))
            return np.int64(0)
        return lambda name=None: tf.py_func(fn, [], tf.int64)

    npu_ops = types.ModuleType("npu_bridge.estimator.npu_ops")
    npu_ops.initialize_system = recorded("initialize_system")
    npu_ops.shutdown_system = recorded("shutdown_system")

    hccl_ops = types.ModuleType("npu_bridge.hccl.hccl_ops")

    def allreduce(tensor, reduction, fusion=1, fusion_id=-1, group="hccl_world_group"):
        calls.append(("allreduce", reduction))
        return tensor * 1

    def broadcast(tensor, root_rank, fusion=2, fusion_id=0, group="hccl_world_group"):
        calls.append(("broadcast", len(tensor), root_rank))
        return [t + 1 for t in tensor]

    hccl_ops.allreduce, hccl_ops.broadcast = allreduce, broadcast
    package = types.ModuleType("npu_bridge")
    package.estimator = types.ModuleType("npu_bridge.estimator")
    package.estimator.npu_ops = npu_ops
    package.hccl = types.ModuleType("npu_bridge.hccl")
    package.hccl.hccl_ops = hccl_ops
    for name, module in (("npu_bridge", package), ("npu_bridge.estimator", package.estimator),
                         ("npu_bridge.estimator.npu_ops", npu_ops),
                         ("npu_bridge.hccl", package.hccl),
                         ("npu_bridge.hccl.hccl_ops", hccl_ops)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


@pytest.fixture
def hccl_env(monkeypatch, tmp_path):
    """Environment of rank 1 of 2 on device 1, as ModelArts sets it."""
    table = tmp_path / "rank_table.json"
    table.write_text("{}")
    for name, value in (("RANK_SIZE", "2"), ("RANK_ID", "1"), ("ASCEND_DEVICE_ID", "1"),
                        ("RANK_TABLE_FILE", str(table))):
        monkeypatch.setenv(name, value)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "RANK_SIZE", "RANK_ID",
                 "RANK_TABLE_FILE", "ASCEND_DEVICE_ID", "DEVICE_ID"):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- session_config

@pytest.mark.parametrize("mode", runtime.PRECISION_MODES)
def test_npu_config_has_every_ascend_option(mode):
    config = runtime.session_config("npu", precision_mode=mode)
    npu = npu_optimizer(config)
    assert npu is not None
    assert npu.parameter_map["use_off_line"].b is True
    assert npu.parameter_map["precision_mode"].s == mode.encode()
    rewrite = config.graph_options.rewrite_options
    assert rewrite.remapping == RewriterConfig.OFF
    assert rewrite.memory_optimization == RewriterConfig.OFF
    # The proto must survive a round trip: a session on the NPU host reads the bytes.
    again = tf.ConfigProto.FromString(config.SerializeToString())
    assert npu_optimizer(again).parameter_map["precision_mode"].s == mode.encode()


def test_gpu_config_grows_memory_on_the_local_rank_gpu():
    config = runtime.session_config("gpu", local_rank=3)
    assert config.gpu_options.allow_growth
    assert config.gpu_options.visible_device_list == "3"
    assert npu_optimizer(config) is None


def test_cpu_config_hides_gpus():
    config = runtime.session_config("cpu")
    assert config.device_count["GPU"] == 0
    assert npu_optimizer(config) is None
    assert config.graph_options.rewrite_options.remapping == RewriterConfig.DEFAULT


def test_xla_and_threads():
    config = runtime.session_config("gpu", xla=True, intra_threads=4, inter_threads=2)
    assert config.graph_options.optimizer_options.global_jit_level == tf.OptimizerOptions.ON_1
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (4, 2)
    assert runtime.session_config("cpu").graph_options.optimizer_options.global_jit_level == 0
    with pytest.raises(ValueError, match="npu"):
        runtime.session_config("npu", xla=True)


XLA_PROBE = """
import runtime, tensorflow.compat.v1 as tf
tf.disable_eager_execution()
x = tf.placeholder(tf.float32, [16, 16])
y = tf.reduce_sum(tf.nn.relu(tf.matmul(x, x) * 2.0 + 1.0))
with runtime.make_session("cpu", runtime.make_backend("none", "cpu"), xla=%s) as sess:
    md = tf.RunMetadata()
    sess.run(y, {x: [[0.5] * 16] * 16}, options=tf.RunOptions(output_partition_graphs=True), run_metadata=md)
print(sum(n.op in ("_XlaRun", "XlaRun") for g in md.partition_graphs for n in g.node))
"""


@pytest.mark.parametrize("xla,clustered", [(True, True), (False, False)])
def test_cpu_xla_compiles_clusters(xla, clustered):
    """--xla on cpu makes XLA clusters (global_jit_level alone does not on
    CPU); without it, none. A fresh process each: TF reads its XLA flags once."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_XLA_FLAGS", None)
    out = subprocess.check_output([sys.executable, "-c", XLA_PROBE % xla], cwd=ROOT, env=env,
                                  universal_newlines=True)
    assert (int(out.split()[-1]) > 0) == clustered, out


@pytest.mark.parametrize("kwargs,named", [
    (dict(device="tpu"), "'tpu'"),
    (dict(device="npu", precision_mode="fp8"), "'fp8'"),
])
def test_invalid_choices_name_the_value_and_the_accepted_ones(kwargs, named):
    with pytest.raises(ValueError) as e:
        runtime.session_config(**kwargs)
    assert named in str(e.value)
    accepted = runtime.DEVICES if "precision_mode" not in kwargs else runtime.PRECISION_MODES
    assert all(a in str(e.value) for a in accepted)


def test_negative_local_rank_is_rejected():
    with pytest.raises(ValueError, match="local_rank -1"):
        runtime.session_config("gpu", local_rank=-1)


# ---------------------------------------------------------------- missing packages

@pytest.mark.parametrize("backend", ["none", "hccl"])
def test_npu_without_npu_bridge_names_npu_bridge_and_cann(monkeypatch, clean_env, backend):
    hide(monkeypatch, "npu_bridge", "npu_bridge.estimator", "npu_bridge.hccl")
    with pytest.raises(RuntimeError) as e:
        runtime.make_backend(backend, "npu")
    assert "npu_bridge" in str(e.value) and "CANN" in str(e.value)


def test_horovod_missing_names_the_package_and_pip_line(monkeypatch, clean_env):
    hide(monkeypatch, "horovod", "horovod.tensorflow")
    with pytest.raises(RuntimeError) as e:
        runtime.make_backend("horovod", "gpu")
    assert "horovod" in str(e.value) and runtime.HOROVOD_PIP in str(e.value)


@pytest.mark.parametrize("name,value", [
    ("OMPI_COMM_WORLD_SIZE", "2"), ("PMI_SIZE", "4"), ("HOROVOD_RANK", "0")])
def test_auto_under_a_launcher_without_horovod_is_an_error(monkeypatch, clean_env, name, value):
    hide(monkeypatch, "horovod", "horovod.tensorflow")
    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError) as e:
        runtime.detect_backend("auto", "gpu")
    assert name in str(e.value) and runtime.HOROVOD_PIP in str(e.value)


# ---------------------------------------------------------------- detect_backend

@pytest.mark.parametrize("env,device,expected", [
    ({}, "gpu", "none"),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, "gpu", "none"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "gpu", "horovod"),
    ({"PMI_SIZE": "2"}, "cpu", "horovod"),
    ({"RANK_SIZE": "8"}, "npu", "hccl"),
    ({"RANK_SIZE": "1"}, "npu", "none"),
    ({"RANK_SIZE": "8"}, "gpu", "none"),  # RANK_SIZE is HCCL's: ignored off the NPU
])
def test_auto_detection(monkeypatch, env, device, expected):
    install_fake_horovod(monkeypatch)
    assert runtime.detect_backend("auto", device, environ=env) == expected


def test_explicit_choice_is_kept_and_validated():
    assert runtime.detect_backend("horovod", "gpu", environ={}) == "horovod"
    with pytest.raises(ValueError, match="'mpi'.*auto, none, horovod, hccl"):
        runtime.detect_backend("mpi", "gpu", environ={})
    with pytest.raises(ValueError, match="OMPI_COMM_WORLD_SIZE=2"):
        runtime.detect_backend("none", "gpu", environ={"OMPI_COMM_WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK_SIZE=8"):
        runtime.detect_backend("none", "npu", environ={"RANK_SIZE": "8"})
    with pytest.raises(ValueError, match="PMI_SIZE='two'"):
        runtime.detect_backend("auto", "gpu", environ={"PMI_SIZE": "two"})


@pytest.mark.parametrize("backend,device", [("hccl", "gpu"), ("horovod", "npu"), ("auto", "cpu")])
def test_backend_device_mismatch_is_rejected(backend, device):
    with pytest.raises(ValueError, match=repr(backend)):
        runtime.make_backend(backend, device)


# ---------------------------------------------------------------- hccl environment

def test_hccl_ranks_from_env(tmp_path):
    table = tmp_path / "t.json"
    table.write_text("{}")
    assert runtime.hccl_ranks_from_env({}) == (0, 1, 0)
    assert runtime.hccl_ranks_from_env({"DEVICE_ID": "5"}) == (0, 1, 5)
    env = {"RANK_SIZE": "8", "RANK_ID": "6", "ASCEND_DEVICE_ID": "2", "DEVICE_ID": "5",
           "RANK_TABLE_FILE": str(table)}
    assert runtime.hccl_ranks_from_env(env) == (6, 8, 2)


@pytest.mark.parametrize("env,error,message", [
    ({"RANK_SIZE": "2", "RANK_ID": "0"}, RuntimeError, "RANK_TABLE_FILE"),
    ({"RANK_SIZE": "2", "RANK_ID": "0", "RANK_TABLE_FILE": "/no/such.json"}, RuntimeError,
     "/no/such.json"),
    ({"RANK_SIZE": "2"}, RuntimeError, "RANK_ID"),
    ({"RANK_SIZE": "2", "RANK_ID": "2"}, ValueError, "RANK_ID=2"),
    ({"RANK_SIZE": "0"}, ValueError, "RANK_SIZE='0'"),
    ({"ASCEND_DEVICE_ID": "x"}, ValueError, "ASCEND_DEVICE_ID='x'"),
])
def test_hccl_environment_errors(env, error, message):
    with pytest.raises(error, match=message):
        runtime.hccl_ranks_from_env(env)


# ---------------------------------------------------------------- none backend

def test_none_backend_is_one_process_and_its_ops_change_nothing():
    backend = runtime.make_backend("none", "cpu")
    assert (backend.rank(), backend.size(), backend.local_rank()) == (0, 1, 0)
    assert backend.is_chief() and backend.rank_seed(7) == 7
    with tf.Graph().as_default():
        a, b = tf.constant([1.0, 2.0]), tf.constant(3.0)
        out = backend.allreduce_mean([a, None, b])
        assert out[0] is a and out[1] is None and out[2] is b
        assert backend.allreduce_mean(a) is a
        v = tf.Variable([5.0, 6.0])
        bcast = backend.broadcast_variables([v])
        assert bcast.type == "NoOp"
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(bcast)
            np.testing.assert_array_equal(sess.run(v), [5.0, 6.0])
        with pytest.raises(ValueError, match="floating-point"):
            backend.allreduce_mean([tf.constant(1)])
        with pytest.raises(ValueError, match="root 1"):
            backend.broadcast_variables([v], root=1)
    backend.close()


# ---------------------------------------------------------------- horovod wiring

def run_collectives(backend):
    """Means of [2, 4] (as a list with None, and alone) and the values of
    v = [1, 2] and w = 10 after broadcast_variables([v, w])."""
    with tf.Graph().as_default():
        g = tf.constant([2.0, 4.0])
        mean, none = backend.allreduce_mean([g, None])
        assert none is None
        means = [mean, backend.allreduce_mean(g)]
        v, w = tf.Variable([1.0, 2.0]), tf.Variable(10.0)
        bcast = backend.broadcast_variables([v, w], root=0)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            got = sess.run(means)
            sess.run(bcast)
            return got, sess.run([v, w])


def test_horovod_averages_once_and_broadcast_assigns(monkeypatch, clean_env):
    calls = install_fake_horovod(monkeypatch, rank=1, size=2, local_rank=1)
    backend = runtime.make_backend("horovod", "gpu")
    assert calls == [("init",)]
    assert (backend.rank(), backend.size(), backend.local_rank()) == (1, 2, 1)
    assert not backend.is_chief()
    assert len({backend.rank_seed(s) for s in range(3)}) == 3 and backend.rank_seed(3) == 7
    means, (v, w) = run_collectives(backend)
    # The fake allreduce is x * 1 with op=Average: any extra division shows.
    np.testing.assert_allclose(means, [[2.0, 4.0]] * 2)
    np.testing.assert_allclose(v, [2.0, 3.0])
    assert w == 11.0
    assert calls[1:] == [("allreduce", "Average")] * 2 + [("broadcast", 0)] * 2
    backend.close()
    assert calls[-1] == ("shutdown",)


# ---------------------------------------------------------------- hccl wiring

def test_hccl_sums_then_divides_once_and_broadcast_assigns(monkeypatch, hccl_env):
    calls = install_fake_npu_bridge(monkeypatch)
    backend = runtime.make_backend("hccl", "npu")
    assert (backend.rank(), backend.size(), backend.local_rank()) == (1, 2, 1)
    means, (v, w) = run_collectives(backend)
    # The fake allreduce sums one replica (x * 1): the mean is x / size.
    np.testing.assert_allclose(means, [[1.0, 2.0]] * 2)
    np.testing.assert_allclose(v, [2.0, 3.0])
    assert w == 11.0
    assert calls == [("allreduce", "sum")] * 2 + [("broadcast", 2, 0)]


# ---------------------------------------------------------------- make_session

def test_cpu_session_runs(clean_env):
    backend = runtime.make_backend("none", "cpu")
    with tf.Graph().as_default():
        x = tf.constant(2.0) * 3.0
        with runtime.make_session("cpu", backend, intra_threads=1) as sess:
            assert sess.run(x) == 6.0
    with pytest.raises(ValueError, match="device 'cpu'"):
        runtime.make_session("gpu", backend)


def test_npu_session_starts_the_system_once_and_close_shuts_it_down(monkeypatch, clean_env):
    calls = install_fake_npu_bridge(monkeypatch)
    backend = runtime.make_backend("none", "npu")
    assert calls == []
    with tf.Graph().as_default():
        x = tf.constant(1.0) + 1.0
        for _ in range(2):
            with runtime.make_session("npu", backend, precision_mode="allow_mix_precision") as s:
                assert s.run(x) == 2.0
        # The init op lives in its own graph, not in the training graph.
        assert not [op for op in tf.get_default_graph().get_operations() if op.type == "PyFunc"]
    assert calls == [("run", "initialize_system")]
    backend.close()
    backend.close()
    assert calls == [("run", "initialize_system"), ("run", "shutdown_system")]


_MALLOC_PROBE = r"""
import ctypes, json, os, sys, tempfile, threading, types
sys.path.insert(0, sys.argv[2])
# tune_malloc needs no TensorFlow: stand-ins for the modules runtime imports
# spare this process the seconds of importing it.
for name in ("tensorflow", "tensorflow.compat", "tensorflow.compat.v1", "tensorflow.core",
             "tensorflow.core.protobuf", "tensorflow.core.protobuf.rewriter_config_pb2"):
    sys.modules[name] = types.ModuleType(name)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, sys.modules[name])
sys.modules["tensorflow.core.protobuf.rewriter_config_pb2"].RewriterConfig = None
import runtime

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p


def n_arenas():
    # malloc_stats() writes one "Arena N:" block per heap to stderr (fd 2).
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        libc.malloc_stats()
        os.dup2(saved, 2)
        f.seek(0)
        return sum(line.startswith(b"Arena ") for line in f.read().splitlines())


settings = runtime.tune_malloc({}) if sys.argv[1] == "tuned" else {}
before = n_arenas()
n_threads = 6
barrier = threading.Barrier(n_threads + 1)


def work():
    libc.malloc(1000)   # a new thread's first malloc picks (or makes) its heap
    barrier.wait()      # all alive at once: no heap is handed back for reuse


threads = [threading.Thread(target=work) for _ in range(n_threads)]
for t in threads:
    t.start()
barrier.wait()
after = n_arenas()
for t in threads:
    t.join()
print(json.dumps([settings, before, after, n_threads]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_tune_malloc_limits_the_heaps():
    """Without tune_malloc each new thread gets a heap of its own; with it no
    heap is added past one per core; a MALLOC_ARENA_MAX of the user's stands."""
    results = {}
    for how in ("default", "tuned"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.check_output([sys.executable, "-c", _MALLOC_PROBE, how, ROOT], env=env)
        results[how] = json.loads(out.decode().strip().splitlines()[-1])
    settings, before, after, n_threads = results["default"]
    assert settings == {} and after >= before + n_threads, results
    settings, before, after, n_threads = results["tuned"]
    assert settings == {"MALLOC_ARENA_MAX": max(2, os.cpu_count())}
    assert after <= max(before, settings["MALLOC_ARENA_MAX"]) < before + n_threads, results
    assert runtime.tune_malloc({"MALLOC_ARENA_MAX": "8"}) == {}
