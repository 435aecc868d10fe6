"""Gradient buckets: every trainable gradient copied into a few flat buffers, one
in-place ``MPI_Allreduce`` per buffer instead of one call per tensor.

A model's gradients are many small arrays (a bias of 10 floats beside a kernel of
200,000); the latency of one collective call is paid per call, so they travel packed.
The buffers are allocated once per training plan and reused at every step.

Buffers hold the gradients in the order backward produces them (last layer first), the
order in which a future version could start reducing one bucket while backward still
runs on earlier layers (PyTorch DDP's overlap).

Gradients that live on a GPU (arrays with ``copy_to_host``/``copy_to_device``, Numba's
device arrays) are staged through the host buffers: the MPICH wheel is not CUDA-aware.
"""
from __future__ import annotations

import numpy as np

#: Largest bucket, in bytes (a single larger tensor gets a bucket of its own). PyTorch DDP's
#: default cap (25 MB): every standard model but catsdogs (73 MiB of float32 parameters)
#: fits in one bucket, i.e. one Allreduce per step.
BUCKET_BYTES = 25 * 2**20


def is_host(array) -> bool:
    return isinstance(array, np.ndarray)


def to_host(array, out):
    """Copies ``array`` (NumPy or device) into the host array ``out`` (same shape)."""
    if is_host(array):
        np.copyto(out, array.reshape(out.shape), casting="no")
    else:
        array.copy_to_host(out)


def from_host(view, array):
    """Writes the host array ``view`` back into ``array`` (NumPy or device), in place."""
    if is_host(array):
        array[...] = view.reshape(array.shape)
    else:
        array.copy_to_device(view)


def pack(arrays, dtype):
    """One new flat host buffer holding ``arrays`` back to back, and the views into it."""
    total = sum(int(np.prod(a.shape)) for a in arrays)
    flat = np.empty(total, dtype=dtype)
    views, start = [], 0
    for a in arrays:
        size = int(np.prod(a.shape))
        views.append(flat[start:start + size].reshape(a.shape))
        start += size
    return flat, views


class GradientBuckets:
    """Preallocated flat buffers for the gradients of ``variables`` (a training plan's
    trainable weights, in the optimizer's order)."""

    def __init__(self, variables, bucket_bytes=BUCKET_BYTES):
        self.variables = variables
        self.views = [None] * len(variables)
        self.buckets = []   # [(flat buffer, [variable indices])]
        groups, group, group_bytes, dtype = [], [], 0, None
        for i in reversed(range(len(variables))):
            v = variables[i]
            nbytes = int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
            if group and (np.dtype(v.dtype) != dtype or group_bytes + nbytes > bucket_bytes):
                groups.append((dtype, group))
                group, group_bytes = [], 0
            group.append(i)
            group_bytes += nbytes
            dtype = np.dtype(v.dtype)
        if group:
            groups.append((dtype, group))
        for dtype, members in groups:
            flat, views = pack([variables[i] for i in members], dtype)
            for i, view in zip(members, views):
                self.views[i] = view
            self.buckets.append((flat, members))
        # Device gradients of the last step that had samples: where a step without samples
        # (a short last batch) writes its result, so the optimizer gets the same kind of array.
        self._device_targets = None

    def average(self, allreduce_sum, grads, weight):
        """The weighted sum over the processes of ``grads`` (``weight * grads`` from this
        process; None when it had no samples), as a list in ``variables`` order.

        ``allreduce_sum(buffer)`` sums a flat buffer over the processes in place.
        """
        for flat, members in self.buckets:
            if grads is None:
                flat.fill(0)
            else:
                for i in members:
                    g, view = grads[i], self.views[i]
                    if is_host(g):
                        # the scaling folded into the copy: one pass; a Python float keeps
                        # float32 gradients float32
                        np.multiply(g, weight, out=view)
                    else:
                        g.copy_to_host(view)
                        view *= weight
            allreduce_sum(flat)
        if grads is not None:
            if all(is_host(g) for g in grads):
                return self.views
            self._device_targets = list(grads)
        targets = self._device_targets
        if targets is None:
            return self.views
        result = []
        for g, view in zip(targets, self.views):
            if is_host(g):
                result.append(view)
            else:
                g.copy_to_device(view)
                result.append(g)
        return result
