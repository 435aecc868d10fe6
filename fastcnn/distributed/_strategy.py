"""The strategies ``Sequential`` calls to share work out: one process, or MPI.

``model.py`` calls the same methods whichever is active (:func:`fastcnn.distributed.current`);
:class:`SingleProcess` makes every one of them the identity, so a program that never
calls ``init()`` never imports mpi4py and runs exactly as before.

Every method of :class:`MPIStrategy` that communicates is a collective call: every process
must reach it, in the same order. ``model.py`` guarantees that by starting each loop of
collective calls with an agreement on its trip count (:meth:`MPIStrategy.agree`, and the
check of :meth:`MPIStrategy.start_fit`), so processes given different data sizes get an
error instead of waiting for each other forever.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
import weakref

import numpy as np

from .. import utils
from . import _buckets

#: Seconds between flushing what a failing process printed and MPI_Abort.
ABORT_GRACE_SECONDS = 1.0


def shard_bounds(count, rank, size):
    """``(lo, hi)``: the contiguous part of ``count`` samples that process ``rank`` of
    ``size`` takes. Parts differ by at most one sample, the larger ones first, so that
    concatenating the parts in rank order gives the samples back in order."""
    base, extra = divmod(int(count), int(size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def fingerprint(array) -> str:
    """A cheap digest of an array's shape, dtype and up to 64 evenly spaced samples: enough
    to tell two processes' data sets apart without hashing them whole."""
    array = np.asarray(array)
    rows = np.unique(np.linspace(0, len(array) - 1, num=min(len(array), 64)).astype(np.int64)) \
        if array.ndim and len(array) else np.zeros(0, dtype=np.int64)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr((array.shape, array.dtype.str)).encode())
    digest.update(np.ascontiguousarray(array[rows] if array.ndim else array).tobytes())
    return digest.hexdigest()


def _launched_processes() -> int:
    """How many processes an MPI launcher started (1 without one), from the variables
    MPICH/Intel MPI (and srun's PMI), Open MPI and MVAPICH set for each process."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return 1


class SingleProcess:
    """The default strategy: one process, nothing to share or communicate."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    is_primary = True
    _warned = False   # once per process, whichever instance

    def __init__(self, warn_if_launched=True):
        # False for fastcnn.distributed.local(): working alone there is what was asked.
        self.warn_if_launched = warn_if_launched

    def check_batch_size(self, batch_size, argument="batch_size"):
        return batch_size

    def start_fit(self, model, plan, params):
        if self.warn_if_launched and not SingleProcess._warned and _launched_processes() > 1:
            SingleProcess._warned = True
            warnings.warn(
                f"this process is one of {_launched_processes()} started by an MPI launcher, "
                f"but fastcnn.distributed.init() was not called: every process trains its "
                f"own copy of the model on all the data", RuntimeWarning, stacklevel=4)

    def start_batch(self, model, plan):
        pass

    def agree(self, what, **values):
        pass

    def prepare_source(self, source, argument):
        pass

    def permutation(self, n):
        return utils.get_rng().permutation(n)

    def shard(self, start, stop):
        return start, stop

    def sum_stats(self, stats):
        return stats

    def average_gradients(self, plan, grads, n, total):
        return grads

    def end_epoch(self, model):
        pass

    def any(self, flag):
        return bool(flag)

    def all(self, flag):
        return bool(flag)

    def gather(self, part):
        return part

    def barrier(self):
        pass

    def broadcast(self, obj, root=0):
        return obj

    def select_device(self):
        return None


# ------------------------------------------------------------------ signatures
def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def _layer_entry(layer):
    config = dict(layer.get_config())
    # Names are not architecture: automatic names count the layers a process created
    # before, which may differ between processes.
    config.pop("name", None)
    return {"class": type(layer).__name__, "name": layer.name, "config": _canonical(config),
            "weights": [(tuple(w.shape), np.dtype(w.dtype).str) for w in layer.weights]}


def _model_signature(model):
    opt = model.optimizer
    opt_config = dict(opt.get_config()) if opt is not None else {}
    for key in ("name", "learning_rate"):   # the rate travels with the broadcast
        opt_config.pop(key, None)
    return {
        "input_shape": model._input_specs,
        "dtype": model.dtype,
        "layers": [_layer_entry(layer) for layer in model._leaf_layers()],
        "loss": repr(model.loss),
        "metrics": model.metrics_names,
        "optimizer": (type(opt).__name__, _canonical(opt_config)),
    }


def _describe_layer(index, entry):
    return (f"layer {index} {entry['name']!r} ({entry['class']}, weights "
            f"{[s for s, _ in entry['weights']] or 'none'})")


def _config_difference(mine, theirs):
    a, b = json.loads(mine), json.loads(theirs)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(f"{k}={a.get(k)!r} there, {b.get(k)!r} on process 0" for k in keys[:4])


def _model_difference(rank, sig, ref):
    """None, or a sentence naming the first difference of process ``rank``'s model."""
    for key in ("input_shape", "dtype"):
        if sig[key] != ref[key]:
            return f"process {rank} has {key} {sig[key]}, process 0 has {ref[key]}"
    layers, ref_layers = sig["layers"], ref["layers"]
    for i in range(max(len(layers), len(ref_layers))):
        if i >= len(layers):
            return (f"process {rank} has {len(layers)} layers, process 0 has "
                    f"{len(ref_layers)} (first missing: {_describe_layer(i, ref_layers[i])})")
        if i >= len(ref_layers):
            return (f"process {rank} has {len(layers)} layers, process 0 has "
                    f"{len(ref_layers)} (first extra: {_describe_layer(i, layers[i])})")
        mine, theirs = layers[i], ref_layers[i]
        if mine["class"] != theirs["class"] or mine["weights"] != theirs["weights"] \
                or mine["config"] != theirs["config"]:
            detail = ""
            if mine["class"] == theirs["class"] and mine["config"] != theirs["config"]:
                detail = f": {_config_difference(mine['config'], theirs['config'])}"
            return (f"process {rank}'s {_describe_layer(i, mine)} differs from process "
                    f"0's {_describe_layer(i, theirs)}{detail}")
    for key in ("loss", "metrics", "optimizer"):
        if sig[key] != ref[key]:
            return f"process {rank} compiled with {key} {sig[key]}, process 0 with {ref[key]}"
    return None


class MPIStrategy:
    """Data parallelism over an MPI communicator (what :func:`init` installs)."""

    def __init__(self, MPI, comm):
        self._MPI = MPI
        # A communicator of our own: fastcnn's collective calls can never be matched
        # with the user's own calls on COMM_WORLD.
        self.comm = comm.Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.is_primary = self.rank == 0
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        self.local_size = node.Get_size()
        node.Free()
        self.device = None
        # Per training plan (the model owns the plan; this cache is the strategy's own).
        self._buckets = weakref.WeakKeyDictionary()

    def __repr__(self):
        return f"<fastcnn.distributed MPI process {self.rank} of {self.size}>"

    # ------------------------------------------------------------ plumbing
    def abort(self, code=1):
        """Ends every process with ``code`` (MPI_Abort), after what this one printed."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):   # closed: nothing left to lose there
                pass
        # The launcher forwards output through processes of its own; aborting at once can
        # tear them down before they passed the last lines on (MPICH's hydra lost a
        # traceback about one time in three).
        time.sleep(ABORT_GRACE_SECONDS)
        self._MPI.COMM_WORLD.Abort(code)

    def barrier(self):
        self.comm.Barrier()

    def broadcast(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def _sum_in_place(self, buffer):
        self.comm.Allreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM)

    def any(self, flag):
        return bool(self.comm.allreduce(bool(flag), op=self._MPI.LOR))

    def all(self, flag):
        return bool(self.comm.allreduce(bool(flag), op=self._MPI.LAND))

    def select_device(self):
        """With the 'cuda' backend active: this process's GPU is local rank modulo the
        machine's GPUs (one GPU per process when there are enough)."""
        from .. import backends

        if self.device is not None or backends.get_backend() != "cuda":
            return self.device
        from numba import cuda

        count = len(cuda.gpus)
        if count == 0:
            raise RuntimeError("the 'cuda' backend is active but this machine has no GPU")
        if self.local_size > count and self.local_rank == 0:
            warnings.warn(f"{self.local_size} processes share {count} GPU(s) on this "
                          f"machine; start at most one process per GPU", RuntimeWarning)
        self.device = self.local_rank % count
        cuda.select_device(self.device)
        return self.device

    # ---------------------------------------------------------- agreement
    def check_batch_size(self, batch_size, argument="batch_size"):
        if batch_size < self.size:
            raise ValueError(
                f"{argument}={batch_size} is the GLOBAL batch, shared out among the "
                f"{self.size} processes, so it must be at least {self.size} (one sample per "
                f"process); use {argument} >= {self.size}, typically the single-process "
                f"batch times {self.size}")
        return batch_size

    def agree(self, what, **values):
        """Raises ValueError on EVERY process when any process passed other ``values``.

        Arrays are compared by :func:`fingerprint`: every process must pass the WHOLE data
        (each takes its share of the same global batches); a Horovod-style script that
        hands each process its own slice would otherwise train on a fraction of it.
        """
        arrays = {k for k, v in values.items() if isinstance(v, np.ndarray)}
        values = {k: fingerprint(v) if k in arrays else v for k, v in values.items()}
        everyone = self.comm.allgather(values)
        for rank, theirs in enumerate(everyone):
            if theirs != everyone[0]:
                keys = [k for k in values if theirs.get(k) != everyone[0].get(k)]
                plain = [k for k in keys if k not in arrays]
                shown = ", ".join(f"{k}={theirs.get(k)!r}" for k in plain)
                ref = ", ".join(f"{k}={everyone[0].get(k)!r}" for k in plain)
                parts = [f"process {rank} has {shown}, process 0 has {ref}"] if plain else []
                if len(plain) < len(keys):
                    parts.append(f"process {rank} passed other "
                                 f"{' and '.join(k for k in keys if k in arrays)} than process 0")
                raise ValueError(
                    f"the processes disagree on {what}: {'; '.join(parts)}; every process "
                    f"must pass the same data and arguments (each process takes its share of "
                    f"the same global batches; to give each process its own data, pass it "
                    f"through a generator or train_on_batch)")

    def prepare_source(self, source, argument):
        """A source with fastcnn's state/shard protocol (``state()``, ``set_state()``,
        ``set_shard()``: ImageDataGenerator's iterators, image_dataset_from_directory's
        datasets) shares each global batch out itself: every process takes rank 0's state
        (seed and position), so that all cut the same batches, and its own shard."""
        if not all(callable(getattr(source, name, None))
                   for name in ("state", "set_state", "set_shard")):
            return   # any other iterator yields this process's own batches (Horovod's way)
        state = source.state()
        self.check_batch_size(state["batch_size"], f"{argument}.batch_size")
        self.agree(f"the iterator {argument}", samples=state["samples"],
                   batch_size=state["batch_size"], shuffle=state["shuffle"],
                   files=state.get("content"))
        source.set_state(self.comm.bcast(state, root=0))
        source.set_shard(self.rank, self.size)

    # --------------------------------------------------------------- fit
    def start_fit(self, model, plan, params):
        """Checks that every process built the same model and was given the same data
        sizes, then broadcasts rank 0's weights and optimizer state."""
        params = {k: v for k, v in (params or {}).items() if k != "verbose"}
        everyone = self.comm.allgather((_model_signature(model), params))
        ref_sig, ref_params = everyone[0]
        for rank, (sig, theirs) in enumerate(everyone[1:], start=1):
            why = _model_difference(rank, sig, ref_sig)
            if why is not None:
                raise ValueError(
                    f"the processes disagree on the model architecture: {why}; every "
                    f"process must build and compile the same model")
            if theirs != ref_params:
                keys = [k for k in ref_params if theirs.get(k) != ref_params.get(k)]
                raise ValueError(
                    f"the processes disagree on fit's arguments: process {rank} has "
                    + ", ".join(f"{k}={theirs.get(k)!r}" for k in keys) + ", process 0 has "
                    + ", ".join(f"{k}={ref_params.get(k)!r}" for k in keys)
                    + "; every process must pass the same data sizes and arguments")
        for _, m, _ in plan.metrics:
            if not all(callable(getattr(m, attr, None))
                       for attr in ("counts", "set_counts", "update_model_output")):
                raise NotImplementedError(
                    f"metric {m.name!r} ({type(m).__name__}) has no counts() / set_counts() / "
                    f"update_model_output(), "
                    f"which fastcnn.distributed uses to sum it over the processes; derive it "
                    f"from fastcnn.metrics.Metric")
        self.select_device()
        self._broadcast_model(model, plan)
        plan.started = True

    def start_batch(self, model, plan):
        """``train_on_batch``: the start-of-fit broadcast, once per training plan."""
        if not plan.started:
            self.start_fit(model, plan, None)

    def _broadcast_arrays(self, arrays):
        if not arrays:
            return
        dtypes = {np.dtype(a.dtype) for a in arrays}
        for dtype in sorted(dtypes, key=str):
            group = [a for a in arrays if np.dtype(a.dtype) == dtype]
            flat, views = _buckets.pack(group, dtype)
            if self.is_primary:
                for a, view in zip(group, views):
                    _buckets.to_host(a, view)
            self.comm.Bcast(flat, root=0)
            if not self.is_primary:
                for a, view in zip(group, views):
                    _buckets.from_host(view, a)

    def _broadcast_model(self, model, plan):
        self._broadcast_arrays(model.weights)
        opt = model.optimizer
        if opt._variables is None:
            # What the first apply() would do (zero state), done now so that rank 0's
            # state has somewhere to go on every process.
            opt.build(plan.train_vars)
        slots = [a for name in sorted(opt._slots) for a in opt._slots[name]]
        self._broadcast_arrays(slots)
        opt.iterations, opt.learning_rate = self.comm.bcast(
            (opt.iterations, opt.learning_rate), root=0)

    def permutation(self, n):
        """Rank 0's shuffle (drawn from fastcnn's generator as one process would draw it)."""
        order = np.empty(n, dtype=np.int64)
        if self.is_primary:
            order[:] = utils.get_rng().permutation(n)
        self.comm.Bcast(order, root=0)
        return order

    def shard(self, start, stop):
        lo, hi = shard_bounds(stop - start, self.rank, self.size)
        return start + lo, start + hi

    def sum_stats(self, stats):
        """``stats`` (a float64 vector: samples, loss sum, the metrics' count changes)
        summed over the processes, in place (one small Allreduce per step).

        Summing the counts (not averaging the accuracies) makes the reported accuracy the
        single-process one exactly, whatever the shares' sizes.
        """
        self._sum_in_place(stats)
        return stats

    def average_gradients(self, plan, grads, n, total):
        """The global batch's mean gradient on every process: each process contributes its
        mean gradient times ``n / total`` (its share), the buckets are summed in place."""
        buckets = self._buckets.get(plan)
        if buckets is None:
            buckets = self._buckets[plan] = _buckets.GradientBuckets(plan.train_vars)
        return buckets.average(self._sum_in_place, grads, n / total)

    def end_epoch(self, model):
        """Averages BatchNormalization's moving statistics (and any other state a trainable
        layer updates in forward) so that every process keeps the same model."""
        state = [w for layer in model._leaf_layers() if layer.trainable
                 for w in layer.non_trainable_weights]
        if not state:
            return
        for dtype in sorted({np.dtype(w.dtype) for w in state}, key=str):
            group = [w for w in state if np.dtype(w.dtype) == dtype]
            flat, views = _buckets.pack(group, dtype)
            for w, view in zip(group, views):
                _buckets.to_host(w, view)
            self._sum_in_place(flat)
            flat *= 1.0 / self.size
            for w, view in zip(group, views):
                _buckets.from_host(view, w)

    # ----------------------------------------------------------- predict
    def gather(self, part):
        """Every process's ``part`` concatenated in rank order, on every process."""
        if not _buckets.is_host(part):   # a device backend's output
            part = part.copy_to_host()
        part = np.ascontiguousarray(part)
        counts = self.comm.allgather(len(part))
        out = np.empty((sum(counts),) + part.shape[1:], dtype=part.dtype)
        row = int(np.prod(part.shape[1:]))
        self.comm.Allgatherv(part, [out, [c * row for c in counts]])
        return out
