"""The gradient buckets on their own (no MPI: the sum over processes is simulated)."""
import numpy as np
import pytest

from fastcnn.distributed._buckets import GradientBuckets


def two_identical_processes(buffer):
    """What an Allreduce SUM over two processes holding the same buffer leaves in it."""
    buffer *= 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_buckets_pack_scale_and_unpack_every_gradient(rng, dtype):
    shapes = [(3, 3, 1, 4), (4,), (36, 6), (6,), (6, 3), (3,)]
    variables = [np.zeros(s, dtype=dtype) for s in shapes]
    grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
    itemsize = np.dtype(dtype).itemsize
    # a cap of 40 elements: several buckets, and the (36, 6) kernel alone in its own
    buckets = GradientBuckets(variables, bucket_bytes=40 * itemsize)
    assert len(buckets.buckets) > 2
    members = sorted(i for _, group in buckets.buckets for i in group)
    assert members == list(range(len(shapes)))   # every gradient in exactly one bucket
    calls = []

    def allreduce(buffer):
        calls.append(buffer)
        two_identical_processes(buffer)

    result = buckets.average(allreduce, grads, 0.25)
    assert len(calls) == len(buckets.buckets)    # one call per bucket, not per tensor
    for got, g in zip(result, grads):
        assert got.dtype == dtype and got.shape == g.shape   # no float64 upcast
        np.testing.assert_allclose(got, 0.5 * g, rtol=1e-6)
    # the buffers are reused: a second step allocates nothing new
    again = buckets.average(two_identical_processes, grads, 0.25)
    assert all(a is b for a, b in zip(again, result))


def test_a_process_without_samples_contributes_zeros(rng):
    variables = [np.zeros((2, 2), np.float32), np.zeros(2, np.float32)]
    buckets = GradientBuckets(variables)
    buckets.average(two_identical_processes, [np.ones((2, 2), np.float32),
                                              np.ones(2, np.float32)], 1.0)
    result = buckets.average(two_identical_processes, None, 0.0)
    assert all(np.all(r == 0) for r in result)   # no stale gradient of the last step


def test_device_gradients_are_staged_through_the_host(rng):
    cuda = pytest.importorskip("numba.cuda", reason="numba is not installed")
    if not cuda.is_available():
        pytest.skip("no CUDA device and no CUDA simulator (NUMBA_ENABLE_CUDASIM=1)")
    host = [rng.standard_normal((3, 4)).astype(np.float32),
            rng.standard_normal(4).astype(np.float32)]
    device = [cuda.to_device(g) for g in host]
    buckets = GradientBuckets([np.zeros_like(g) for g in host])
    result = buckets.average(two_identical_processes, device, 0.5)
    for got, dev, g in zip(result, device, host):
        assert got is dev                         # averaged in place, on the device
        np.testing.assert_allclose(got.copy_to_host(), g, rtol=1e-6)
    # a later step without samples writes into the same device arrays
    result = buckets.average(two_identical_processes, None, 0.0)
    assert result[0] is device[0] and np.all(result[0].copy_to_host() == 0)
