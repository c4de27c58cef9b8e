"""Where the graph runs and how ranks talk.

The one module that knows about Horovod and Huawei's npu_bridge (TF Adapter
for Ascend NPUs). Everything else builds a backend once,

    backend = make_backend(detect_backend(args.backend, args.device), args.device)
    sess = make_session(args.device, backend, precision_mode=args.precision_mode)

and then only calls `backend.rank()`, `size()`, `local_rank()`, `is_chief()`,
`rank_seed()`, `allreduce_mean()`, `broadcast_variables()` and, at the end,
`close()`. There is no module-level state: a backend is a plain object.

Devices: cpu, gpu (CUDA) and npu (Ascend, TF 1.15 + npu_bridge).
Backends: none (one process), horovod (MPI/Gloo across GPUs or CPUs) and
hccl (Huawei's collective library across NPUs, ranks from the environment
that ModelArts or the CANN launch scripts set: RANK_SIZE, RANK_ID,
RANK_TABLE_FILE, ASCEND_DEVICE_ID).

horovod and npu_bridge are imported only when that backend or device is asked
for, so CPU and GPU runs need neither.
"""
import atexit
import collections
import ctypes
import os
import platform

import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

DEVICES = ("cpu", "gpu", "npu")
BACKENDS = ("none", "horovod", "hccl")
# Values of the NpuOptimizer "precision_mode" option (CANN documentation).
PRECISION_MODES = ("allow_fp32_to_fp16", "allow_mix_precision",
                   "must_keep_origin_dtype", "force_fp16", "force_fp32")
# Which devices each backend can drive.
BACKEND_DEVICES = {"none": DEVICES, "horovod": ("cpu", "gpu"), "hccl": ("npu",)}

HOROVOD_PIP = "HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 pip install horovod==0.28.1"

NpuBridge = collections.namedtuple("NpuBridge", ["npu_ops", "hccl_ops"])


def _check_choice(what, value, choices):
    if value not in choices:
        raise ValueError("%s %r: must be one of %s" % (what, value, ", ".join(choices)))


def _check_pair(backend, device):
    _check_choice("backend", backend, BACKENDS)
    _check_choice("device", device, DEVICES)
    if device not in BACKEND_DEVICES[backend]:
        raise ValueError("backend %r cannot run on device %r: it runs on %s"
                         % (backend, device, ", ".join(BACKEND_DEVICES[backend])))


# ---------------------------------------------------------------- session config

def session_config(device, local_rank=0, precision_mode="allow_fp32_to_fp16", xla=False,
                   intra_threads=0, inter_threads=0):
    """tf.ConfigProto for `device`, from plain TF protos (needs no npu_bridge).

    cpu: hides every GPU. gpu: one GPU per process, the one at `local_rank`,
    memory grown on demand. npu: the NpuOptimizer custom graph optimizer,
    which hands the graph to the Ascend compiler, with `use_off_line` (run on
    the NPU, not the host) and `precision_mode`; Grappler's remapping and
    memory optimization are off because their fused or swapped nodes have no
    NPU kernels. The NPU is chosen by the environment (ASCEND_DEVICE_ID), not
    by `local_rank`. `precision_mode` only matters on npu, but is validated
    everywhere so that a typo fails on a laptop too.
    xla: XLA auto-clustering (global_jit_level ON_1), cpu and gpu only.
    intra_threads/inter_threads: TF thread pools, 0 = TF picks.
    """
    _check_choice("device", device, DEVICES)
    _check_choice("precision_mode", precision_mode, PRECISION_MODES)
    for name, value in (("local_rank", local_rank), ("intra_threads", intra_threads),
                        ("inter_threads", inter_threads)):
        if not isinstance(value, int) or value < 0:
            raise ValueError("%s %r: must be an integer >= 0" % (name, value))
    if xla and device == "npu":
        raise ValueError("xla=True on device 'npu': the NPU compiles the graph itself "
                         "(NpuOptimizer); use xla only on cpu or gpu")

    config = tf.ConfigProto(allow_soft_placement=True,
                            intra_op_parallelism_threads=intra_threads,
                            inter_op_parallelism_threads=inter_threads)
    if device == "cpu":
        config.device_count["GPU"] = 0
    elif device == "gpu":
        config.gpu_options.allow_growth = True
        config.gpu_options.visible_device_list = str(local_rank)
    else:
        _add_npu_optimizer(config, precision_mode)
    if xla:
        config.graph_options.optimizer_options.global_jit_level = tf.OptimizerOptions.ON_1
    return config


def _add_npu_optimizer(config, precision_mode):
    rewrite = config.graph_options.rewrite_options
    npu = rewrite.custom_optimizers.add()
    npu.name = "NpuOptimizer"
    npu.parameter_map["use_off_line"].b = True
    npu.parameter_map["precision_mode"].s = tf.compat.as_bytes(precision_mode)
    rewrite.remapping = RewriterConfig.OFF
    rewrite.memory_optimization = RewriterConfig.OFF


# ---------------------------------------------------------------- lazy imports

def require_npu_bridge():
    """Import the npu_bridge modules this file uses -> NpuBridge(npu_ops, hccl_ops).

    Importing the npu_bridge package loads its TF kernels (_tf_adapter.so) and
    registers the NpuOptimizer named in session_config().
    """
    try:
        from npu_bridge.estimator import npu_ops
        from npu_bridge.hccl import hccl_ops
    except ImportError as e:
        raise RuntimeError(
            "device 'npu' and backend 'hccl' need npu_bridge (Huawei's TF Adapter for "
            "Ascend), which is installed with the CANN toolkit for TensorFlow 1.15 and "
            "is not on pip: run on an Ascend host or ModelArts image with CANN, after "
            "`source <CANN install dir>/set_env.sh`. (%s)" % e) from e
    return NpuBridge(npu_ops, hccl_ops)


def _import_horovod(why):
    try:
        import horovod.tensorflow as hvd
    except ImportError as e:
        raise RuntimeError(
            "%s needs horovod built with TensorFlow support, which is not importable "
            "(%s). Install it with: %s" % (why, e, HOROVOD_PIP)) from e
    return hvd


# ---------------------------------------------------------------- environment

def _int_env(environ, name, default, minimum):
    raw = environ.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError("environment variable %s=%r: must be an integer >= %d"
                         % (name, raw, minimum))
    return value


def _horovod_launcher(environ):
    """How a Horovod launch shows in the environment, or None."""
    if "HOROVOD_RANK" in environ:
        return "horovodrun (HOROVOD_RANK=%s)" % environ["HOROVOD_RANK"]
    for name, launcher in (("OMPI_COMM_WORLD_SIZE", "mpirun"), ("PMI_SIZE", "an MPI launcher")):
        if _int_env(environ, name, 1, 1) > 1:
            return "%s (%s=%s)" % (launcher, name, environ[name])
    return None


def hccl_ranks_from_env(environ=None):
    """(rank, size, local_rank) of this NPU process, from the variables that
    ModelArts and the CANN launch scripts set: RANK_SIZE (default 1), RANK_ID
    (required when RANK_SIZE > 1), ASCEND_DEVICE_ID or, in older CANN,
    DEVICE_ID (default 0). With several ranks HCCL also needs RANK_TABLE_FILE,
    the JSON file listing every device of the job."""
    env = os.environ if environ is None else environ
    size = _int_env(env, "RANK_SIZE", 1, 1)
    if size > 1 and env.get("RANK_ID", "").strip() == "":
        raise RuntimeError("RANK_SIZE=%d but RANK_ID is not set: each HCCL process needs "
                           "its rank in RANK_ID" % size)
    rank = _int_env(env, "RANK_ID", 0, 0)
    if rank >= size:
        raise ValueError("environment variable RANK_ID=%d: must be < RANK_SIZE=%d" % (rank, size))
    device_var = "ASCEND_DEVICE_ID" if "ASCEND_DEVICE_ID" in env else "DEVICE_ID"
    local_rank = _int_env(env, device_var, 0, 0)
    if size > 1:
        table = env.get("RANK_TABLE_FILE", "")
        if not table or not os.path.isfile(table):
            raise RuntimeError(
                "RANK_SIZE=%d needs RANK_TABLE_FILE, the HCCL rank table (JSON) of the "
                "job; got %r. ModelArts sets it for multi-card jobs; elsewhere write one "
                "as described in the CANN documentation." % (size, table))
    return rank, size, local_rank


def detect_backend(requested, device, environ=None):
    """The backend to use: `requested` unless it is 'auto'.

    auto: horovod when a Horovod/MPI launcher started this process
    (HOROVOD_RANK set, OMPI_COMM_WORLD_SIZE > 1 or PMI_SIZE > 1); then a
    missing horovod is an error, not a silent single-process run. Else hccl on
    device npu with RANK_SIZE > 1. Else none.
    An explicit 'none' under such a launcher is an error too: every process
    would train alone and write to the same log directory.
    """
    env = os.environ if environ is None else environ
    _check_choice("backend", requested, ("auto",) + BACKENDS)
    _check_choice("device", device, DEVICES)
    launcher = _horovod_launcher(env)
    hccl_size = _int_env(env, "RANK_SIZE", 1, 1) if device == "npu" else 1
    if requested == "auto":
        if launcher:
            _import_horovod("this process was started by %s, which" % launcher)
            return "horovod"
        return "hccl" if hccl_size > 1 else "none"
    if requested == "none" and (launcher or hccl_size > 1):
        raise ValueError("backend 'none', but this process is one of several (%s): use "
                         "backend 'auto', 'horovod' or 'hccl'"
                         % (launcher or "RANK_SIZE=%d" % hccl_size))
    return requested


# ---------------------------------------------------------------- backends

class Backend(object):
    """Ranks and collectives of one training process.

    name, device: as given to make_backend(). Subclasses provide the two
    collectives (_allreduce_mean_one, _broadcast) and _shutdown().
    """

    name = "none"

    def __init__(self, device, rank=0, size=1, local_rank=0, npu=None):
        self.device = device
        self._rank, self._size, self._local_rank = rank, size, local_rank
        self._npu = npu              # NpuBridge when device == 'npu'
        self._npu_system = None      # _NpuSystem once make_session() started it

    def rank(self):
        return self._rank

    def size(self):
        return self._size

    def local_rank(self):
        return self._local_rank

    def is_chief(self):
        """Rank 0 writes logs, checkpoints and samples."""
        return self._rank == 0

    def rank_seed(self, seed):
        """A seed distinct per (seed, rank), equal to `seed` in one process,
        so that ranks draw different batches and noise."""
        return seed * self._size + self._rank

    def allreduce_mean(self, tensors):
        """Mean over ranks of each floating-point tensor (None passes through,
        as tf.gradients gives for unused variables). A list or tuple gives a
        list; one tensor gives one tensor. With one rank, the inputs come
        back unchanged."""
        single = not isinstance(tensors, (list, tuple))
        items = [tensors] if single else list(tensors)
        for t in items:
            if t is not None:
                dtype = getattr(t, "dtype", None)
                if dtype is None or not tf.as_dtype(dtype).is_floating:
                    raise ValueError("allreduce_mean(%r): a mean across ranks needs a "
                                     "floating-point tensor" % (t,))
        if self._size > 1:
            items = [None if t is None else self._allreduce_mean_one(t) for t in items]
        return items[0] if single else items

    def broadcast_variables(self, variables, root=0):
        """Op that assigns rank `root`'s value of each variable to it on every
        rank; run it once after initialization so all ranks start equal."""
        variables = list(variables)
        if not isinstance(root, int) or not 0 <= root < self._size:
            raise ValueError("broadcast root %r: must be a rank in [0, %d)" % (root, self._size))
        if self._size == 1 or not variables:
            return tf.no_op(name="broadcast_variables")
        values = self._broadcast(variables, root)
        assert len(values) == len(variables), "broadcast returned %d tensors for %d variables" % (
            len(values), len(variables))
        return tf.group(*[tf.assign(v, value) for v, value in zip(variables, values)],
                        name="broadcast_variables")

    def close(self):
        """Shut down the NPU system (if make_session started it), then the
        backend. Safe to call more than once."""
        if self._npu_system is not None:
            self._npu_system.shutdown()
        self._shutdown()

    def _allreduce_mean_one(self, tensor):
        raise NotImplementedError("backend %r has one rank only" % self.name)

    def _broadcast(self, variables, root):
        raise NotImplementedError("backend %r has one rank only" % self.name)

    def _shutdown(self):
        pass

    def _start_npu_system(self, config):
        if self._npu_system is None:
            self._npu_system = _NpuSystem(self._npu.npu_ops, config)


class HorovodBackend(Backend):
    """Horovod: ranks from hvd.rank()/size()/local_rank() after hvd.init()."""

    name = "horovod"

    def __init__(self, device, hvd):
        hvd.init()
        super(HorovodBackend, self).__init__(device, hvd.rank(), hvd.size(), hvd.local_rank())
        self._hvd = hvd

    def _allreduce_mean_one(self, tensor):
        # Horovod averages itself (op=Average): no division here.
        return self._hvd.allreduce(tensor, op=self._hvd.Average)

    def _broadcast(self, variables, root):
        return [self._hvd.broadcast(v, root_rank=root) for v in variables]

    def _shutdown(self):
        self._hvd.shutdown()


class HcclBackend(Backend):
    """HCCL on Ascend: ranks from the environment (hccl_ranks_from_env);
    collectives from npu_bridge.hccl.hccl_ops, whose allreduce only sums."""

    name = "hccl"

    def __init__(self, device, npu, environ=None):
        rank, size, local_rank = hccl_ranks_from_env(environ)
        super(HcclBackend, self).__init__(device, rank, size, local_rank, npu=npu)

    def _allreduce_mean_one(self, tensor):
        if isinstance(tensor, tf.IndexedSlices):
            tensor = tf.convert_to_tensor(tensor)  # HCCL reduces dense tensors only
        summed = self._npu.hccl_ops.allreduce(tensor, "sum")
        return summed / float(self._size)

    def _broadcast(self, variables, root):
        # hccl_ops.broadcast takes and returns a list of tensors: one fused call.
        return list(self._npu.hccl_ops.broadcast(tensor=variables, root_rank=root))


class _NpuSystem(object):
    """npu_ops.initialize_system run once, in a session of its own graph so the
    training graph holds no init op; shutdown() runs shutdown_system once.
    Ascend's sess.run examples do the same before any session that uses HCCL."""

    def __init__(self, npu_ops, config):
        graph = tf.Graph()
        with graph.as_default():
            init = npu_ops.initialize_system()
            self._shutdown_op = npu_ops.shutdown_system()
        self._session = tf.Session(graph=graph, config=config)
        try:
            self._session.run(init)
        except Exception:
            self._session.close()
            raise
        # Also at interpreter exit if close() was never reached; this runs
        # before npu_bridge's own exit hook (atexit is last-in, first-out).
        atexit.register(self.shutdown)

    def shutdown(self):
        if self._session is None:
            return
        session, self._session = self._session, None
        try:
            session.run(self._shutdown_op)
        finally:
            session.close()


def make_backend(name, device, environ=None):
    """Backend object for `name` (one of BACKENDS, not 'auto': see
    detect_backend) on `device`. Imports horovod or npu_bridge only when
    needed; device 'npu' fails here, early, when npu_bridge is missing."""
    _check_pair(name, device)
    npu = require_npu_bridge() if device == "npu" else None
    if name == "horovod":
        return HorovodBackend(device, _import_horovod("backend 'horovod'"))
    if name == "hccl":
        return HcclBackend(device, npu, environ)
    return Backend(device, npu=npu)


CPU_JIT_FLAG = "--tf_xla_cpu_global_jit"


# glibc malloc's mallopt parameter M_ARENA_MAX (malloc.h).
_M_ARENA_MAX = -8


def tune_malloc(environ=None):
    """One glibc malloc heap (arena) per core instead of up to eight per core.

    Each of TF's many threads gets a heap of its own by default, and a
    tensor freed into one heap stays resident until that heap reuses it:
    the paper's model trained about 250 MiB higher on this 2-core machine,
    at no measured speed cost with one heap per core (docs/BENCHMARKS.md).
    Call once, early: it limits the heaps created from then on, in the whole
    process. A MALLOC_ARENA_MAX the user set stands. Returns {setting: value}
    of what was set; empty where the C library is not glibc."""
    environ = os.environ if environ is None else environ
    if platform.libc_ver()[0] != "glibc" or "MALLOC_ARENA_MAX" in environ:
        return {}
    arenas = max(2, os.cpu_count() or 1)
    if not ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas):
        raise RuntimeError("glibc mallopt(M_ARENA_MAX, %d) refused" % arenas)
    return {"MALLOC_ARENA_MAX": arenas}


def enable_cpu_autoclustering():
    """Let global_jit_level cluster ops on the CPU as well: TF auto-clusters
    only GPU ops unless TF_XLA_FLAGS holds --tf_xla_cpu_global_jit (without
    it, xla=True on cpu silently compiled nothing). TF reads the variable
    once per process, when the first session optimizes a graph, so this must
    run before that."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if CPU_JIT_FLAG not in flags.split():
        os.environ["TF_XLA_FLAGS"] = (flags + " " + CPU_JIT_FLAG).strip()


def make_session(device, backend, graph=None, **config_kwargs):
    """tf.Session configured by session_config(device, backend.local_rank(),
    **config_kwargs).

    On cpu with xla=True, also enable_cpu_autoclustering(): call it before
    any other session of the process has run.

    On npu, the first call also initializes the NPU system (and HCCL) with
    npu_ops.initialize_system in a side session; backend.close() runs
    shutdown_system, and so does an atexit hook if close() is never reached.
    """
    if device != backend.device:
        raise ValueError("make_session(%r, ...): the backend was made for device %r"
                         % (device, backend.device))
    config = session_config(device, local_rank=backend.local_rank(), **config_kwargs)
    if device == "cpu" and config_kwargs.get("xla"):
        enable_cpu_autoclustering()
    if device == "npu":
        backend._start_npu_system(config)
    return tf.Session(graph=graph, config=config)
