"""The backend registry: names, switching, capability reporting, loud failures."""
from __future__ import annotations

import sys
import threading
import types

import pytest

from fastcnn import backends
from fastcnn.backends import OPS

FAKE = "fastcnn_test_fake_backend"


@pytest.fixture
def registry():
    """The registry module, restored afterwards (entries, load caches, active backend)."""
    saved = (
        dict(backends._REGISTRY),
        dict(backends._LOADED),
        dict(backends._FAILED),
        backends.get_backend(),
    )
    try:
        yield backends
    finally:
        for table, contents in zip(
            (backends._REGISTRY, backends._LOADED, backends._FAILED), saved[:3]
        ):
            table.clear()
            table.update(contents)
        backends.set_backend(saved[3])   # the process-wide default


@pytest.fixture
def fake_module(monkeypatch):
    """A backend module implementing only conv2d_forward, importable as FAKE."""
    module = types.ModuleType(FAKE, "A fake backend for the registry tests.")

    def conv2d_forward(x, w, b, stride, pad):
        return "fake-y", "fake-ctx"

    module.conv2d_forward = conv2d_forward
    monkeypatch.setitem(sys.modules, FAKE, module)
    return module


# ------------------------------------------------------------------------------- names


def test_available_lists_the_numpy_backends_first():
    names = backends.available()
    assert names[:2] == ["reference", "im2col"]  # registration order
    assert all(isinstance(n, str) for n in names)
    assert not set(names) & set(backends.unavailable())


def test_default_backend_is_available():
    assert backends._DEFAULT in backends.available()


def test_set_and_get_backend(registry):
    for name in backends.available():
        backends.set_backend(name)
        assert backends.get_backend() == name
        assert backends.current().name == name
        assert backends.get() is backends.get(name)


def test_use_backend_switches_and_restores(registry):
    backends.set_backend("im2col")
    with backends.use_backend("reference") as be:
        assert be.name == "reference"
        assert backends.get_backend() == "reference"
        with backends.use_backend("im2col"):
            assert backends.get_backend() == "im2col"
        assert backends.get_backend() == "reference"
    assert backends.get_backend() == "im2col"


def test_use_backend_restores_on_exception(registry):
    backends.set_backend("im2col")
    with pytest.raises(KeyError, match="boom"):
        with backends.use_backend("reference"):
            raise KeyError("boom")
    assert backends.get_backend() == "im2col"


def test_use_backend_in_one_thread_leaves_the_other_threads_alone(registry):
    backends.set_backend("im2col")
    inside, checked, seen = threading.Event(), threading.Event(), {}

    def worker():
        with backends.use_backend("reference"):
            inside.set()
            checked.wait(30)
            seen["worker in its block"] = (backends.get_backend(), backends.current().name)
        seen["worker after its block"] = backends.get_backend()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert inside.wait(30)
        # The worker's block is open: this thread still runs on the default ...
        seen["main"] = (backends.get_backend(), backends.current().name)
        # ... and a block of its own does not reach the worker.
        with backends.use_backend("im2col"):
            seen["main in its block"] = backends.get_backend()
    finally:
        checked.set()
        thread.join(30)
    assert seen == {"main": ("im2col", "im2col"), "main in its block": "im2col",
                    "worker in its block": ("reference", "reference"),
                    "worker after its block": "im2col"}


def test_set_backend_is_the_default_of_threads_without_a_block(registry):
    backends.set_backend("reference")
    seen = []
    thread = threading.Thread(target=lambda: seen.append(backends.get_backend()))
    thread.start()
    thread.join(30)
    assert seen == ["reference"]
    with backends.use_backend("im2col"):
        backends.set_backend("reference")   # inside a block: here at once, and after it
        assert backends.get_backend() == "reference"
    assert backends.get_backend() == "reference"


def test_a_model_runs_on_two_backends_in_two_threads_at_once(registry):
    import fastcnn
    import numpy as np
    from fastcnn import layers

    def model():
        return fastcnn.Sequential([layers.Input((5, 5, 2)), layers.Conv2D(3, 3),
                                   layers.Flatten(), layers.Dense(2)])
    x = np.random.default_rng(0).random((4, 5, 5, 2), dtype=np.float32)
    used, barrier = {}, threading.Barrier(2, timeout=30)
    real_current = backends.current

    def spy():
        backend = real_current()
        used.setdefault(threading.current_thread().name, set()).add(backend.name)
        return backend

    def run(name):
        m = model()
        with backends.use_backend(name):
            barrier.wait()   # both blocks are open now
            m.predict(x, verbose=0)
            barrier.wait()

    registry.current = spy
    try:
        threads = [threading.Thread(target=run, args=(n,), name=n)
                   for n in ("reference", "im2col")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        registry.current = real_current
    assert used == {"reference": {"reference"}, "im2col": {"im2col"}}


@pytest.mark.parametrize("call", ["get", "set_backend", "use_backend"])
@pytest.mark.parametrize("bad", ["refrence", "", 42, "Im2col"])
def test_unknown_name_is_a_value_error_listing_the_backends(registry, call, bad):
    backends.set_backend("reference")
    with pytest.raises(ValueError) as info:
        if call == "use_backend":
            with backends.use_backend(bad):
                pass  # pragma: no cover - must not be reached
        else:
            getattr(backends, call)(bad)
    message = str(info.value)
    assert repr(bad) in message
    for name in backends.available():
        assert repr(name) in message
    assert backends.get_backend() == "reference"  # a failed switch changes nothing


# ----------------------------------------------------------------- a backend lacking ops


def test_missing_op_raises_not_implemented_naming_op_and_backend(registry, fake_module):
    backends.register("fake", FAKE)
    assert "fake" in backends.available()
    fake = backends.get("fake")
    assert fake.implements("conv2d_forward")
    assert fake.conv2d_forward(None, None, None, (1, 1), ((0, 0), (0, 0))) == (
        "fake-y",
        "fake-ctx",
    )
    for op in OPS:
        if op == "conv2d_forward":
            continue
        assert not fake.implements(op)
        # Raised when CALLED (the backend still loads and reports what it has), and
        # never silently answered by another backend that has the op.
        with pytest.raises(NotImplementedError) as info:
            getattr(fake, op)()
        message = str(info.value)
        assert repr(op) in message and repr("fake") in message
        assert "reference" in message  # points the user at a backend that has it


def test_a_fused_op_a_backend_lacks_answers_not_fused(registry, fake_module):
    """Fused ops are optional: without one, the backend says "not fused" (None) and the
    caller runs the separate ops on the same backend; it is not a missing kernel."""
    backends.register("fake", FAKE)
    fake = backends.get("fake")
    for op in backends.FUSED_OPS:
        assert not fake.implements(op)
        assert getattr(fake, op)(None, None, None, (1, 1), ((0, 0), (0, 0)), (2, 2), (2, 2),
                                 ((0, 0), (0, 0))) is None
    assert backends.get("auto").implements("conv2d_maxpool2d_forward")


def test_capabilities_of_a_partial_backend(registry, fake_module):
    backends.register("fake", FAKE)
    table = backends.capability_table()
    assert table["fake"] == {op: op == "conv2d_forward" for op in OPS}
    assert backends.get("fake").description == "A fake backend for the registry tests."
    with backends.use_backend("fake") as be:
        assert backends.current() is be


def test_capability_table_covers_every_available_backend():
    table = backends.capability_table()
    assert list(table) == backends.available()
    for name, caps in table.items():
        assert list(caps) == list(OPS), name
    # The oracle and the default backend must be complete: everything is tested against
    # the first, and layers run on the second.
    for name in ("reference", "im2col"):
        missing = [op for op, ok in table[name].items() if not ok]
        assert not missing, f"{name} lacks {missing}"


def test_ops_are_the_module_functions_themselves():
    # No per-call dispatch wrapper between a layer and its kernel.
    reference = backends.get("reference")
    for op in OPS:
        assert getattr(reference, op) is getattr(reference.module, op)


# ------------------------------------------------------------- backends that cannot load


def test_unavailable_reports_why_a_backend_cannot_load(registry, tmp_path, monkeypatch):
    (tmp_path / "fastcnn_test_broken_backend.py").write_text(
        'raise ImportError("libfake.so.1: cannot open shared object file")\n'
    )
    (tmp_path / "fastcnn_test_absent_device.py").write_text(
        '"""Needs a device."""\n'
        "def is_available():\n"
        '    return False, "no fake accelerator on this machine"\n'
        "def relu_forward(x):\n"
        "    return x, None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    backends.register("broken", "fastcnn_test_broken_backend")
    backends.register("absent", "fastcnn_test_absent_device")
    backends.register("missing", "fastcnn_test_no_such_module_anywhere")

    reasons = backends.unavailable()
    assert "libfake.so.1" in reasons["broken"]
    assert reasons["absent"] == "no fake accelerator on this machine"
    assert "fastcnn_test_no_such_module_anywhere" in reasons["missing"]
    for name in ("broken", "absent", "missing"):
        assert name not in backends.available()
        assert name not in backends.capability_table()
        with pytest.raises(ValueError, match="not available on this machine") as info:
            backends.set_backend(name)
        assert reasons[name] in str(info.value)


def test_register_again_forgets_an_earlier_failure(registry, fake_module):
    backends.register("fake", "fastcnn_test_no_such_module_anywhere")
    assert "fake" in backends.unavailable()
    backends.register("fake", FAKE)
    assert "fake" in backends.available()
    assert "fake" not in backends.unavailable()
