"""Where the graph runs and how ranks talk: the one module that knows about
Horovod and Huawei's npu_bridge (TF Adapter for Ascend NPUs). The rest builds

    backend = make_backend(detect_backend(args.backend, args.device), args.device)
    sess = make_session(args.device, backend, precision_mode=args.precision_mode)

and then calls only the backend's methods; there is no module-level state.
Devices: cpu, gpu (CUDA), npu (Ascend, TF 1.15 + npu_bridge). Backends: none
(one process), horovod (MPI/Gloo across GPUs or CPUs), hccl (Huawei's
collectives across NPUs, ranks from the environment that ModelArts or the
CANN launch scripts set). horovod and npu_bridge are imported only when that
backend or device is asked for.
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
# Which devices each backend can drive.
BACKEND_DEVICES = {"none": DEVICES, "horovod": ("cpu", "gpu"), "hccl": ("npu",)}
# Values of the NpuOptimizer "precision_mode" option (CANN documentation).
PRECISION_MODES = ("allow_fp32_to_fp16", "allow_mix_precision",
                   "must_keep_origin_dtype", "force_fp16", "force_fp32")

HOROVOD_PIP = "HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 pip install horovod==0.28.1"

NpuBridge = collections.namedtuple("NpuBridge", ["npu_ops", "hccl_ops"])


def _check_choice(what, value, choices):
    if value not in choices:
        raise ValueError("%s %r: must be one of %s" % (what, value, ", ".join(choices)))


def session_config(device, local_rank=0, precision_mode="allow_fp32_to_fp16", xla=False,
                   intra_threads=0, inter_threads=0):
    """tf.ConfigProto for `device`, from plain TF protos (needs no npu_bridge).

    cpu: no GPU. gpu: the GPU at `local_rank`, memory grown on demand. npu:
    the NpuOptimizer graph optimizer (the Ascend compiler) running the graph
    on the NPU (`use_off_line`) in `precision_mode`, with Grappler's remapping
    and memory optimization off: their nodes have no NPU kernels. The
    environment (ASCEND_DEVICE_ID) picks the NPU. `precision_mode` is checked
    on every device, so a typo fails on a laptop too. xla: auto-clustering
    (cpu, gpu). intra_threads/inter_threads: TF's thread pools, 0 = TF picks.
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

    config = tf.ConfigProto(allow_soft_placement=True, intra_op_parallelism_threads=intra_threads,
                            inter_op_parallelism_threads=inter_threads)
    if device == "cpu":
        config.device_count["GPU"] = 0
    elif device == "gpu":
        config.gpu_options.allow_growth = True
        config.gpu_options.visible_device_list = str(local_rank)
    else:
        rewrite = config.graph_options.rewrite_options
        npu = rewrite.custom_optimizers.add()
        npu.name = "NpuOptimizer"
        npu.parameter_map["use_off_line"].b = True
        npu.parameter_map["precision_mode"].s = tf.compat.as_bytes(precision_mode)
        rewrite.remapping = RewriterConfig.OFF
        rewrite.memory_optimization = RewriterConfig.OFF
    if xla:
        config.graph_options.optimizer_options.global_jit_level = tf.OptimizerOptions.ON_1
    return config


def _require_npu_bridge():
    """NpuBridge(npu_ops, hccl_ops). Importing npu_bridge loads its TF kernels
    and registers the NpuOptimizer named in session_config()."""
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
        raise RuntimeError("%s needs horovod built with TensorFlow support, which is not importable "
                           "(%s). Install it with: %s" % (why, e, HOROVOD_PIP)) from e
    return hvd


def _int_env(environ, name, default, minimum):
    raw = environ.get(name, "")
    if not raw.strip():
        return default
    if not raw.strip().isdecimal() or int(raw) < minimum:
        raise ValueError("environment variable %s=%r: must be an integer >= %d" % (name, raw, minimum))
    return int(raw)


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
    local_rank = _int_env(env, "ASCEND_DEVICE_ID" if "ASCEND_DEVICE_ID" in env else "DEVICE_ID", 0, 0)
    table = env.get("RANK_TABLE_FILE", "")
    if size > 1 and not (table and os.path.isfile(table)):
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
                         "backend 'auto', 'horovod' or 'hccl'" % (launcher or "RANK_SIZE=%d" % hccl_size))
    return requested


class Backend(object):
    """Ranks and collectives of one training process; as it is, one process
    alone. Subclasses provide the collectives (_allreduce_mean_one,
    _broadcast) and _shutdown()."""

    name = "none"

    def __init__(self, device, rank=0, size=1, local_rank=0, npu=None):
        self.device = device
        self._rank, self._size, self._local_rank = rank, size, local_rank
        self._npu = npu             # NpuBridge on device 'npu'
        self._npu_system = None     # (session, shutdown op) once make_session started it

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
            if t is not None and not tf.as_dtype(getattr(t, "dtype", tf.string)).is_floating:
                raise ValueError("allreduce_mean(%r): a mean across ranks needs a floating-point tensor" % (t,))
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
        assert len(values) == len(variables), "broadcast gave %d tensors for %d variables" % (
            len(values), len(variables))
        return tf.group(*[tf.assign(v, value) for v, value in zip(variables, values)],
                        name="broadcast_variables")

    def close(self):
        """Shut down the NPU system (if make_session started it), then the
        backend. Safe to call more than once."""
        self._stop_npu_system()
        self._shutdown()

    def _allreduce_mean_one(self, tensor):
        raise NotImplementedError("backend %r has one rank only" % self.name)

    def _broadcast(self, variables, root):
        raise NotImplementedError("backend %r has one rank only" % self.name)

    def _shutdown(self):
        pass

    def _start_npu_system(self, config):
        """npu_ops.initialize_system, once, in a session of its own graph (the
        training graph holds no init op), as Ascend's examples do before any
        session that uses HCCL."""
        if self._npu_system is not None:
            return
        graph = tf.Graph()
        with graph.as_default():
            init, shutdown = self._npu.npu_ops.initialize_system(), self._npu.npu_ops.shutdown_system()
        session = tf.Session(graph=graph, config=config)
        try:
            session.run(init)
        except Exception:
            session.close()
            raise
        self._npu_system = session, shutdown
        # Also at interpreter exit if close() is never reached; this runs
        # before npu_bridge's own exit hook (atexit is last-in, first-out).
        atexit.register(self._stop_npu_system)

    def _stop_npu_system(self):
        if self._npu_system is not None:
            (session, shutdown), self._npu_system = self._npu_system, None
            try:
                session.run(shutdown)
            finally:
                session.close()


class HorovodBackend(Backend):
    """Horovod: ranks from hvd.rank()/size()/local_rank() after hvd.init()."""

    name = "horovod"

    def __init__(self, device, hvd):
        hvd.init()
        super(HorovodBackend, self).__init__(device, hvd.rank(), hvd.size(), hvd.local_rank())
        self._hvd = hvd

    def _allreduce_mean_one(self, tensor):
        return self._hvd.allreduce(tensor, op=self._hvd.Average)  # Horovod divides

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
        tensor = tf.convert_to_tensor(tensor)  # HCCL reduces dense tensors only (not IndexedSlices)
        return self._npu.hccl_ops.allreduce(tensor, "sum") / float(self._size)

    def _broadcast(self, variables, root):
        # hccl_ops.broadcast takes and returns a list of tensors: one fused call.
        return list(self._npu.hccl_ops.broadcast(tensor=variables, root_rank=root))


def make_backend(name, device, environ=None):
    """Backend object for `name` (one of BACKENDS, not 'auto': see
    detect_backend) on `device`. Imports horovod or npu_bridge only when
    needed; device 'npu' fails here, early, when npu_bridge is missing."""
    _check_choice("backend", name, BACKENDS)
    _check_choice("device", device, DEVICES)
    if device not in BACKEND_DEVICES[name]:
        raise ValueError("backend %r cannot run on device %r: it runs on %s"
                         % (name, device, ", ".join(BACKEND_DEVICES[name])))
    npu = _require_npu_bridge() if device == "npu" else None
    if name == "horovod":
        return HorovodBackend(device, _import_horovod("backend 'horovod'"))
    if name == "hccl":
        return HcclBackend(device, npu, environ)
    return Backend(device, npu=npu)


def make_session(device, backend, graph=None, **config_kwargs):
    """tf.Session configured by session_config(device, backend.local_rank(), **config_kwargs).

    On cpu with xla=True, also adds --tf_xla_cpu_global_jit to TF_XLA_FLAGS,
    without which global_jit_level clusters GPU ops only. TF reads it once per
    process, when the first session optimizes a graph: call this first.
    On npu, the first call also starts the NPU system (and HCCL), which
    backend.close() (or, failing that, interpreter exit) shuts down.
    """
    if device != backend.device:
        raise ValueError("make_session(%r, ...): the backend was made for device %r" % (device, backend.device))
    config = session_config(device, local_rank=backend.local_rank(), **config_kwargs)
    if device == "cpu" and config_kwargs.get("xla"):
        flags = os.environ.get("TF_XLA_FLAGS", "").split()
        if "--tf_xla_cpu_global_jit" not in flags:
            os.environ["TF_XLA_FLAGS"] = " ".join(flags + ["--tf_xla_cpu_global_jit"])
    if device == "npu":
        backend._start_npu_system(config)
    return tf.Session(graph=graph, config=config)


def tune_malloc(environ=None):
    """Limit glibc malloc to one heap (arena) per core instead of up to eight:
    each of TF's many threads gets a heap of its own, and memory freed into
    one heap stays resident until that heap reuses it. Call once, early: it
    limits the heaps created from then on, in the whole process. A
    MALLOC_ARENA_MAX the user set stands. Returns {setting: value} of what was
    set; {} where the C library is not glibc."""
    environ = os.environ if environ is None else environ
    if platform.libc_ver()[0] != "glibc" or "MALLOC_ARENA_MAX" in environ:
        return {}
    arenas = max(2, os.cpu_count() or 1)
    m_arena_max = -8  # mallopt parameter M_ARENA_MAX (malloc.h)
    if not ctypes.CDLL(None).mallopt(m_arena_max, arenas):
        raise RuntimeError("glibc mallopt(M_ARENA_MAX, %d) refused" % arenas)
    return {"MALLOC_ARENA_MAX": arenas}
