"""Private: the compiled kernels of the ``numba`` backend (see :mod:`.kernels`).

Importing this package requires numba; :mod:`fastcnn.backends.numba_cpu` imports it only
after checking that numba is installed.
"""
