"""mpiexec -n 2 python gpu.py: with the cuda backend active, init() gives each process of a
machine its GPU (local rank modulo the GPUs; the CUDA simulator has one)."""
import warnings

import fastcnn
from fastcnn import distributed

fastcnn.set_backend("cuda")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    distributed.init()
from numba import cuda  # noqa: E402

count = len(cuda.gpus)
device = distributed.current().device
assert device == distributed.local_rank() % count, (device, count)
# (the simulator's device has no id; a real one must be the selected one)
assert getattr(cuda.get_current_device(), "id", device) == device
shared = any("processes share" in str(w.message) for w in caught)
print(f"process {distributed.rank()} on GPU {device} of {count}, shared warning {shared}",
      flush=True)
