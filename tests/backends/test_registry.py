"""The backend registry: names, switching, capability reporting, loud failures."""
from __future__ import annotations

import re
import sys
import threading
import types

import pytest

from fastcnn import backends
from fastcnn.backends import OPS, _specs

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
    # No per-call dispatch wrapper between a layer and its kernel: every implemented op is
    # the backend module's function itself, or for a reused op (REUSES) the other
    # backend's module function itself.
    reference = backends.get("reference")
    for op in OPS:
        assert getattr(reference, op) is getattr(reference.module, op)
    for name in backends.available():
        backend = backends.get(name)
        for op in OPS + backends.FUSED_OPS:
            if not backend.implements(op):
                continue
            owner = backend
            while owner.reused_from(op) is not None:
                owner = backends.get(owner.reused_from(op))
            assert getattr(backend, op) is getattr(owner.module, op), (name, op)


def test_every_kernel_has_the_signature_its_spec_declares():
    """The spec's signature is the contract: every backend's function for an op takes
    exactly those parameters, with those defaults (auto's generated ones included)."""
    import inspect
    for name in backends.available():
        backend = backends.get(name)
        for spec in _specs.SPECS.values():
            for op, backward in ((spec.forward_op, False), (spec.backward_op, True)):
                if op is None or not backend.implements(op):
                    continue
                got = inspect.signature(getattr(backend, op))
                want = spec.signature(backward)
                assert [(p.name, p.default) for p in got.parameters.values()] == \
                    [(p.name, p.default) for p in want.parameters.values()], (name, op, str(got))


# ------------------------------------------------------------------------- the specs


def test_ops_and_fused_ops_are_derived_from_the_specs():
    assert OPS == tuple(op for s in _specs.SPECS.values() if not s.fused for op in s.ops)
    assert backends.FUSED_OPS == ("conv2d_maxpool2d_forward",)
    assert len(set(OPS + backends.FUSED_OPS)) == len(OPS) + len(backends.FUSED_OPS)
    conv, dense, relu = _specs.SPECS["conv2d"], _specs.SPECS["dense"], _specs.SPECS["relu"]
    assert conv.ops == ("conv2d_forward", "conv2d_backward") and conv.need_dx
    assert dense.ops == ("dense_forward", "dense_backward") and dense.need_dx
    assert not relu.need_dx
    assert _specs.SPECS["depthwise_conv2d"].need_dx
    assert _specs.SPECS["softmax_cross_entropy"].ops == ("softmax_cross_entropy",)
    assert _specs.SPECS["conv2d_maxpool2d_forward"].requires == (
        "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward")
    assert _specs.spec_of("relu6_backward").name == "relu6"
    with pytest.raises(KeyError, match="'nope_forward' is not an op"):
        _specs.spec_of("nope_forward")


def test_the_contract_table_of_the_docstring_lists_every_op_once():
    for op in OPS + backends.FUSED_OPS:
        assert backends.__doc__.count(f"``{op}(") == 1, op
    assert "{contract}" not in backends.__doc__ and "{fused}" not in backends.__doc__
    assert "Keras's depthwise kernel" in backends.__doc__


def _square_spec(name="fake_square", family="numpy_activation"):
    return _specs.OpSpec(name, "x", "``-> (y, ctx)``; ``x * x`` (a test op)", family=family,
                         check=_specs._x, example=_specs._ex_x)


@pytest.fixture
def fake_op(registry, monkeypatch):
    """A new op "fake_square" declared by its spec alone, implemented by im2col only (its
    module gains the two functions), taken back afterwards."""
    import numpy as np
    from fastcnn.backends import auto

    def fake_square_forward(x):
        return x * x, x

    def fake_square_backward(dy, ctx):
        return 2 * ctx * dy

    module = backends.get("im2col").module
    monkeypatch.setattr(module, "fake_square_forward", fake_square_forward, raising=False)
    monkeypatch.setattr(module, "fake_square_backward", fake_square_backward, raising=False)
    backends.add_op(_square_spec())
    try:
        yield np, auto, module
    finally:
        backends.remove_op("fake_square")


def test_a_new_op_spec_appears_everywhere_without_other_edits(fake_op, capsys):
    np, auto, module = fake_op
    assert backends.OPS[-2:] == ("fake_square_forward", "fake_square_backward")
    table = backends.capability_table()
    assert table["im2col"]["fake_square_forward"] and table["im2col"]["fake_square_backward"]
    assert not table["reference"]["fake_square_forward"]
    im2col = backends.get("im2col")
    assert im2col.fake_square_forward is module.fake_square_forward   # no wrapper
    # auto routes it by its family's row (numpy_activation: im2col) ...
    assert table["auto"]["fake_square_forward"]
    x = np.arange(6.0).reshape(2, 3)
    y, ctx = backends.get("auto").fake_square_forward(x)
    np.testing.assert_array_equal(y, x * x)
    assert ctx[0] is im2col
    np.testing.assert_array_equal(auto.fake_square_backward(np.ones_like(x), ctx), 2 * x)
    assert auto.choices()["numpy_activation/any"] == "im2col"
    # ... and fastcnn info lists it.
    from fastcnn.cli import main
    assert main(["info"]) == 0
    assert re.search(r"^\s+fake_square_forward\s+-\s+x\s", capsys.readouterr().out,
                     re.MULTILINE)


def test_a_removed_op_spec_leaves_no_trace(fake_op):
    np, auto, module = fake_op
    backends.remove_op("fake_square")
    try:
        assert "fake_square_forward" not in backends.OPS
        assert not hasattr(auto, "fake_square_forward")
        assert not hasattr(backends.get("im2col"), "fake_square_forward")
        assert "fake_square_forward" not in backends.capability_table()["im2col"]
    finally:
        backends.add_op(_square_spec())   # the fixture takes it back


def test_an_op_declared_twice_is_refused():
    with pytest.raises(ValueError, match="'dense' is already declared"):
        backends.add_op(_specs.SPECS["dense"])


def test_a_spec_declared_op_a_backend_lacks_raises_naming_op_and_backend(fake_op):
    """The op is in the contract (its spec) but reference has no kernel for it: it loads,
    reports the op missing, and raises when the op is called, naming the op, the backend
    and the backends that have it; it never runs another backend's kernel."""
    np, auto, module = fake_op
    reference = backends.get("reference")
    assert not reference.implements("fake_square_forward")
    for op in ("fake_square_forward", "fake_square_backward"):
        with pytest.raises(NotImplementedError) as info:
            getattr(reference, op)(np.ones(3))
        message = str(info.value)
        assert repr(op) in message and repr("reference") in message and "'im2col'" in message


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


# --------------------------------------------------------------------------- REUSES


def test_im2col_and_numba_reuse_the_reference_dense_visibly(capsys):
    """Dense was the same code in three backends: two now declare REUSES and get the
    reference's functions themselves, reported as implemented and shown in fastcnn info."""
    reference = backends.get("reference")
    for name in ("im2col", "numba"):
        if name not in backends.available():
            continue
        backend = backends.get(name)
        assert backend.module.REUSES["dense"] == "reference"   # (+ batchnorm: im2col)
        assert not hasattr(backend.module, "dense_forward")   # the copy is gone
        for op in ("dense_forward", "dense_backward"):
            assert getattr(backend, op) is getattr(reference.module, op)
            assert backend.implements(op) and backend.reused_from(op) == "reference"
            assert backends.capability_table()[name][op] is True
        assert backend.reused_from("conv2d_forward") is None
    from fastcnn.cli import main
    assert main(["info"]) == 0
    row = re.search(r"^\s+dense_forward\s+(.*)$", capsys.readouterr().out, re.MULTILINE)
    cells = dict(zip(backends.available(), row.group(1).split()))
    assert cells["reference"] == "x" and cells["im2col"] == "=reference"


def _module(name, monkeypatch, doc="A fake backend.", **attrs):
    module = types.ModuleType(name, doc)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_a_declared_reuse_binds_the_other_backends_functions(registry, monkeypatch):
    _module(FAKE, monkeypatch, REUSES={"dense": "im2col", "relu": "reference"})
    backends.register("fake", FAKE)
    fake, im2col = backends.get("fake"), backends.get("im2col")
    assert fake.dense_forward is im2col.dense_forward          # im2col's is reference's
    assert fake.dense_backward is im2col.dense_backward
    assert fake.relu_forward is backends.get("reference").module.relu_forward
    assert fake.reused_from("dense_forward") == "im2col"
    assert fake.reused_from("relu_backward") == "reference"
    table = backends.capability_table()["fake"]
    assert [op for op, ok in table.items() if ok] == [
        "dense_forward", "dense_backward", "relu_forward", "relu_backward"]
    with pytest.raises(NotImplementedError, match="'fake' does not implement 'conv2d_forward'"):
        fake.conv2d_forward()


@pytest.mark.parametrize("reuses, message", [
    ({"dens": "im2col"}, "REUSES names 'dens', which is not an op of the kernel contract"),
    ({"dense_forward": "im2col"}, "REUSES names 'dense_forward'"),   # pairs, never halves
    ({"dense": "nowhere"}, "REUSES['dense'] = 'nowhere' is not another registered backend"),
    ({"dense": "fake"}, "REUSES['dense'] = 'fake' is not another registered backend"),
    (["dense"], "REUSES must be a dict"),
])
def test_a_bad_reuse_declaration_keeps_the_backend_from_loading(registry, monkeypatch,
                                                                 reuses, message):
    _module(FAKE, monkeypatch, REUSES=reuses)
    backends.register("fake", FAKE)
    assert "fake" not in backends.available()
    assert message in backends.unavailable()["fake"]


def test_defining_and_reusing_one_op_is_refused(registry, monkeypatch):
    _module(FAKE, monkeypatch, REUSES={"dense": "im2col"},
            dense_backward=lambda dy, ctx: None)
    backends.register("fake", FAKE)
    assert "both defines ['dense_backward'] and declares REUSES['dense']" in \
        backends.unavailable()["fake"]


def test_circular_reuse_is_refused(registry, monkeypatch):
    _module(FAKE, monkeypatch, REUSES={"dense": "fake2"})
    _module(FAKE + "2", monkeypatch, REUSES={"dense": "fake"})
    backends.register("fake", FAKE)
    backends.register("fake2", FAKE + "2")
    # fake loads first and asks fake2, which asks fake again: fake2 fails, saying why, and
    # fake's dense is missing (with that reason), never looped over.
    fake = backends.get("fake")
    assert "circular REUSES" in backends.unavailable()["fake2"]
    assert not fake.implements("dense_forward")
    with pytest.raises(NotImplementedError, match="circular REUSES"):
        fake.dense_forward(None, None, None)


def test_reusing_from_a_backend_that_cannot_load_leaves_the_op_missing_saying_why(
        registry, monkeypatch):
    _module(FAKE + "_absent", monkeypatch,
            is_available=lambda: (False, "no fake device here"))
    _module(FAKE, monkeypatch, REUSES={"dense": "absent"}, relu_forward=lambda x: (x, None))
    backends.register("absent", FAKE + "_absent")
    backends.register("fake", FAKE)
    fake = backends.get("fake")
    assert not fake.implements("dense_forward") and fake.reused_from("dense_forward") == "absent"
    with pytest.raises(NotImplementedError) as info:
        fake.dense_forward(None, None, None)
    message = str(info.value)
    assert "'fake' does not implement 'dense_forward'" in message
    assert "REUSES from 'absent', which cannot load here: no fake device here" in message
    assert "'reference'" in message   # where it is


def test_reusing_an_op_the_other_backend_lacks_leaves_it_missing(registry, monkeypatch,
                                                                  fake_module):
    _module(FAKE + "_user", monkeypatch, REUSES={"dense": "fake"})
    backends.register("fake", FAKE)          # fake_module: conv2d_forward only
    backends.register("user", FAKE + "_user")
    user = backends.get("user")
    assert not user.implements("dense_backward")
    with pytest.raises(NotImplementedError, match="REUSES from 'fake', which does not "
                                                  "implement it either"):
        user.dense_backward(None, None)
