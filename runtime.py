"""Where the graph runs and how ranks talk: the one module that knows Horovod and Huawei's npu_bridge
(TF Adapter for Ascend NPUs), each imported only when its backend or device is asked for. The rest calls

    backend = make_backend(detect_backend(args.backend, args.device), args.device)
    sess = make_session(args.device, backend, precision_mode=args.precision_mode)

and then only the backend's methods; there is no module-level state. Devices: cpu, gpu (CUDA), npu
(Ascend, TF 1.15 + npu_bridge). Backends: none (one process), horovod (MPI/Gloo across GPUs or CPUs),
hccl (Huawei's collectives across NPUs, ranks from the environment ModelArts or CANN's launch scripts set).
"""
import atexit
import collections
import ctypes
import os
import platform

import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

import utils

DEVICES = ("cpu", "gpu", "npu")
BACKENDS = ("none", "horovod", "hccl")
BACKEND_DEVICES = {"none": DEVICES, "horovod": ("cpu", "gpu"), "hccl": ("npu",)}  # what each can drive
# Values of the NpuOptimizer "precision_mode" option (CANN documentation).
PRECISION_MODES = ("allow_fp32_to_fp16", "allow_mix_precision", "must_keep_origin_dtype", "force_fp16", "force_fp32")
HOROVOD_PIP = "HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 pip install horovod==0.28.1"
NpuBridge = collections.namedtuple("NpuBridge", ["npu_ops", "hccl_ops"])


def session_config(device, local_rank=0, precision_mode="allow_fp32_to_fp16", xla=False,
                   intra_threads=0, inter_threads=0):
    """tf.ConfigProto for `device`, from plain TF protos (no npu_bridge needed). cpu: no GPU. gpu: the GPU at
    `local_rank`, memory grown on demand. npu (ASCEND_DEVICE_ID picks it): the NpuOptimizer (the Ascend compiler)
    running the graph on the NPU (`use_off_line`) in `precision_mode`, with Grappler's remapping and memory
    optimization off (their nodes have no NPU kernels). `precision_mode` is checked on every device, so a typo
    fails on a laptop too. xla: auto-clustering (cpu, gpu). intra/inter_threads: TF's pools, 0 = TF picks."""
    utils.check_choice("device", device, DEVICES)
    utils.check_choice("precision_mode", precision_mode, PRECISION_MODES)
    for name, value in (("local_rank", local_rank), ("intra_threads", intra_threads), ("inter_threads", inter_threads)):
        if not isinstance(value, int) or value < 0:
            raise ValueError("%s %r: must be an integer >= 0" % (name, value))
    if xla and device == "npu":
        raise ValueError("xla=True on device 'npu': the NPU compiles the graph itself (NpuOptimizer); "
                         "use xla only on cpu or gpu")
    config = tf.ConfigProto(allow_soft_placement=True, intra_op_parallelism_threads=intra_threads,
                            inter_op_parallelism_threads=inter_threads)
    if device == "cpu":
        config.device_count["GPU"] = 0
    elif device == "gpu":
        config.gpu_options.allow_growth = True
        config.gpu_options.visible_device_list = str(local_rank)
    else:
        rewrite = config.graph_options.rewrite_options
        npu = rewrite.custom_optimizers.add(name="NpuOptimizer")
        npu.parameter_map["use_off_line"].b = True
        npu.parameter_map["precision_mode"].s = tf.compat.as_bytes(precision_mode)
        rewrite.remapping = rewrite.memory_optimization = RewriterConfig.OFF
    if xla:
        config.graph_options.optimizer_options.global_jit_level = tf.OptimizerOptions.ON_1
    return config


def _require_npu_bridge():
    """NpuBridge(npu_ops, hccl_ops); the import registers the NpuOptimizer and NPU kernels."""
    try:
        from npu_bridge.estimator import npu_ops
        from npu_bridge.hccl import hccl_ops
    except ImportError as e:
        raise RuntimeError("device 'npu' and backend 'hccl' need npu_bridge (Huawei's TF Adapter for Ascend), which "
                           "is installed with the CANN toolkit for TensorFlow 1.15 and is not on pip: run on an Ascend "
                           "host or ModelArts image with CANN, after `source <CANN install dir>/set_env.sh`. (%s)"
                           % e) from e
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
    """(rank, size, local_rank) of this NPU process, from what ModelArts and CANN's launch scripts set:
    RANK_SIZE (default 1), RANK_ID (required when RANK_SIZE > 1), ASCEND_DEVICE_ID or, in older CANN,
    DEVICE_ID (default 0). Several ranks also need RANK_TABLE_FILE, the JSON list of the job's devices."""
    env = os.environ if environ is None else environ
    size = _int_env(env, "RANK_SIZE", 1, 1)
    if size > 1 and env.get("RANK_ID", "").strip() == "":
        raise RuntimeError("RANK_SIZE=%d but RANK_ID is not set: each HCCL process needs its rank in RANK_ID" % size)
    rank = _int_env(env, "RANK_ID", 0, 0)
    if rank >= size:
        raise ValueError("environment variable RANK_ID=%d: must be < RANK_SIZE=%d" % (rank, size))
    local_rank = _int_env(env, "ASCEND_DEVICE_ID" if "ASCEND_DEVICE_ID" in env else "DEVICE_ID", 0, 0)
    table = env.get("RANK_TABLE_FILE", "")
    if size > 1 and not (table and os.path.isfile(table)):
        raise RuntimeError("RANK_SIZE=%d needs RANK_TABLE_FILE, the HCCL rank table (JSON) of the job; got %r. "
                           "ModelArts sets it for multi-card jobs; elsewhere write one as described in the CANN "
                           "documentation." % (size, table))
    return rank, size, local_rank


def detect_backend(requested, device, environ=None):
    """`requested`, or for 'auto': horovod under a Horovod/MPI launcher (HOROVOD_RANK set, OMPI_COMM_WORLD_SIZE or
    PMI_SIZE > 1; then a missing horovod is an error, not a silent single-process run), else hccl on device npu with
    RANK_SIZE > 1, else none. 'none' there is an error: each process would train alone, all in one log directory."""
    env = os.environ if environ is None else environ
    utils.check_choice("backend", requested, ("auto",) + BACKENDS)
    utils.check_choice("device", device, DEVICES)
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
    """Ranks and collectives of one training process; as it is, one process alone. Subclasses provide
    the collectives (_allreduce_mean_one, _broadcast) and extend close()."""

    name = "none"

    def __init__(self, device, rank=0, size=1, local_rank=0, npu=None):
        self.device, self._rank, self._size, self._local_rank = device, rank, size, local_rank
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
        """A seed distinct per (seed, rank), `seed` itself in one process: ranks draw different batches and noise."""
        return seed * self._size + self._rank

    def allreduce_mean(self, tensors):
        """Mean over ranks of a floating-point tensor, or of each in a list or tuple (giving a list); None
        (tf.gradients' for an unused variable) passes through. With one rank, the inputs unchanged."""
        single = not isinstance(tensors, (list, tuple))
        items = [tensors] if single else list(tensors)
        for t in items:
            if t is not None and not tf.as_dtype(getattr(t, "dtype", tf.string)).is_floating:
                raise ValueError("allreduce_mean(%r): a mean across ranks needs a floating-point tensor" % (t,))
        if self._size > 1:
            items = [None if t is None else self._allreduce_mean_one(t) for t in items]
        return items[0] if single else items

    def broadcast_variables(self, variables, root=0):
        """Op giving each variable rank `root`'s value on every rank; run it once after initialization."""
        variables = list(variables)
        if not isinstance(root, int) or not 0 <= root < self._size:
            raise ValueError("broadcast root %r: must be a rank in [0, %d)" % (root, self._size))
        if self._size == 1 or not variables:
            return tf.no_op(name="broadcast_variables")
        values = self._broadcast(variables, root)
        assert len(values) == len(variables), "broadcast: %d tensors for %d variables" % (len(values), len(variables))
        return tf.group(*[tf.assign(v, value) for v, value in zip(variables, values)], name="broadcast_variables")

    def close(self):
        """Shut down the NPU system if make_session started it (subclasses extend this); idempotent."""
        if self._npu_system is not None:
            (session, shutdown), self._npu_system = self._npu_system, None
            try:
                session.run(shutdown)
            finally:
                session.close()

    def _allreduce_mean_one(self, tensor):
        raise NotImplementedError("backend %r has one rank only" % self.name)

    def _broadcast(self, variables, root):
        raise NotImplementedError("backend %r has one rank only" % self.name)

    def _start_npu_system(self, config):
        """npu_ops.initialize_system, once, in a session of its own graph (the training graph holds no init
        op), as Ascend's examples do before any session that uses HCCL."""
        if self._npu_system is not None:
            return
        with tf.Graph().as_default() as graph:
            init, shutdown = self._npu.npu_ops.initialize_system(), self._npu.npu_ops.shutdown_system()
        session = tf.Session(graph=graph, config=config)
        try:
            session.run(init)
        except Exception:
            session.close()
            raise
        self._npu_system = session, shutdown
        # Also at interpreter exit if close() is never reached: before npu_bridge's own exit hook (LIFO).
        atexit.register(self.close)


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

    def close(self):
        super(HorovodBackend, self).close()
        self._hvd.shutdown()


class HcclBackend(Backend):
    """HCCL on Ascend: ranks from hccl_ranks_from_env; collectives from hccl_ops (its allreduce only sums)."""

    name = "hccl"

    def __init__(self, device, npu, environ=None):
        super(HcclBackend, self).__init__(device, *hccl_ranks_from_env(environ), npu=npu)

    def _allreduce_mean_one(self, tensor):
        tensor = tf.convert_to_tensor(tensor)  # HCCL reduces dense tensors only (not IndexedSlices)
        return self._npu.hccl_ops.allreduce(tensor, "sum") / float(self._size)

    def _broadcast(self, variables, root):
        # hccl_ops.broadcast takes and returns a list of tensors: one fused call.
        return list(self._npu.hccl_ops.broadcast(tensor=variables, root_rank=root))


def make_backend(name, device, environ=None):
    """Backend `name` (one of BACKENDS; detect_backend resolves 'auto') on `device`. Imports horovod or
    npu_bridge only when needed; device 'npu' fails here, early, when npu_bridge is missing."""
    utils.check_choice("backend", name, BACKENDS)
    utils.check_choice("device", device, DEVICES)
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
    """tf.Session configured by session_config(device, backend.local_rank(), **config_kwargs). cpu with
    xla=True: also adds --tf_xla_cpu_global_jit to TF_XLA_FLAGS (else global_jit_level clusters GPU ops
    only), which TF reads when the process's first session optimizes a graph: call this first. npu: the
    first call starts the NPU system (and HCCL), which backend.close() or interpreter exit shuts down."""
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
    """Limit glibc malloc to one heap (arena) per core instead of up to eight: each of TF's many threads gets a
    heap of its own, and memory freed into one heap stays resident until that heap reuses it. Call once, early:
    it limits the heaps created from then on, process-wide. A MALLOC_ARENA_MAX the user set stands. Returns
    {setting: value} of what was set; {} where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc" or "MALLOC_ARENA_MAX" in (os.environ if environ is None else environ):
        return {}
    arenas = max(2, os.cpu_count() or 1)
    if not ctypes.CDLL(None).mallopt(-8, arenas):  # -8: M_ARENA_MAX (malloc.h)
        raise RuntimeError("glibc mallopt(M_ARENA_MAX, %d) refused" % arenas)
    return {"MALLOC_ARENA_MAX": arenas}
