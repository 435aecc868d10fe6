"""Shared fixtures: one parametrisation over every backend that loads here, and an rng."""
import os

# The CUDA backend is tested in Numba's CUDA simulator. Numba reads this switch once, when
# it is first imported, so it must be set here, before any test module (or fastcnn's
# backend registry) imports numba. setdefault: a CI job on a real GPU can export 0.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# fastcnn before NumPy: it sets OpenBLAS's idle-thread timeout, read when NumPy loads.
from fastcnn import backends  # noqa: E402, I001
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Under the simulator every CUDA thread is a Python thread (about 0.5 ms each), so the
# generic suites (hypothesis shapes, whole models trained per backend) would take hours
# on "cuda". There it is left out of them: tests/backends/test_cuda*.py and
# tests/test_cuda_*.py cover every op of it, forward and backward, against the reference
# on tiny shapes instead. On a real GPU (NUMBA_ENABLE_CUDASIM=0) it joins the generic suites.
CUDA_SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
SIMULATOR_SKIP = ("cuda runs under the CUDA simulator here (too slow for the generic "
                  "suites): tests/backends/test_cuda*.py and tests/test_cuda_*.py cover it "
                  "on tiny shapes")
CUDA_TEST_FILES = ("test_cuda",)

# Every registered backend that loads on this machine: registering a new backend is all
# it takes for the backend suites to test it.
BACKENDS = [name for name in backends.available()
            if not (name == "cuda" and CUDA_SIMULATED)]


# Session scope: hypothesis rejects function-scoped fixtures in @given tests, and the
# value is a plain string anyway.
@pytest.fixture(scope="session", params=BACKENDS, ids=BACKENDS)
def backend_name(request):
    return request.param


@pytest.fixture(scope="session")
def backend(backend_name):
    """The loaded :class:`fastcnn.backends.Backend` called ``backend_name``."""
    return backends.get(backend_name)


@pytest.fixture
def rng():
    return np.random.default_rng(20240601)


def pytest_collection_modifyitems(config, items):
    """Test modules that parametrise over ``backends.available()`` themselves get their
    "cuda" cases skipped, visibly, under the simulator (see BACKENDS above)."""
    if not CUDA_SIMULATED:
        return
    skip = pytest.mark.skip(reason=SIMULATOR_SKIP)
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or item.path.name.startswith(CUDA_TEST_FILES):
            continue
        if any(isinstance(v, str) and v == "cuda" for v in callspec.params.values()):
            item.add_marker(skip)
