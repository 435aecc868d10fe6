"""Shared fixtures: one parametrisation over every backend that loads here, and an rng."""
import os

# The CUDA backend is tested in Numba's CUDA simulator. Numba reads this switch once, when
# it is first imported, so it must be set here, before any test module (or fastcnn's
# backend registry) imports numba. setdefault: a CI job on a real GPU can export 0.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fastcnn import backends  # noqa: E402

# Every registered backend that loads on this machine: registering a new backend is all
# it takes for the backend suites to test it.
BACKENDS = backends.available()


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
