"""The 'auto' backend: which row of its table each kind of conv takes, and that it only
ever routes to backends that load here."""
import re

import numpy as np
import pytest

from fastcnn import backends
from fastcnn.backends import auto

NO_PAD = ((0, 0), (0, 0))


@pytest.mark.parametrize("x_shape, w_shape, pad, kind", [
    ((64, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2)), "few_channels"),   # LeNet conv1
    ((1, 28, 28, 1), (3, 3, 1, 8), NO_PAD, "few_channels"),              # from-scratch conv
    ((32, 150, 150, 3), (3, 3, 3, 32), NO_PAD, "deep"),                  # cats-vs-dogs conv1
    ((64, 28, 28, 1), (3, 3, 1, 64), NO_PAD, "deep"),                    # shape A: 389k
    ((64, 14, 14, 6), (5, 5, 6, 16), NO_PAD, "small"),                   # LeNet conv2: 240k
    ((1, 4, 4, 16), (3, 3, 16, 32), ((1, 1), (1, 1)), "small"),         # digits conv2: 74k
    ((64, 13, 13, 64), (3, 3, 64, 64), NO_PAD, "deep"),                  # Fashion conv2: 4.4M
    ((64, 28, 28, 8), (3, 3, 8, 8), ((1, 1), (1, 1)), "deep"),          # 451k
])
def test_conv_kind(x_shape, w_shape, pad, kind):
    assert auto.conv_kind(x_shape, w_shape, (1, 1), pad) == kind


def test_the_small_threshold_counts_per_image_forward_work():
    # The batch does not matter: the rule is about the shape of one image's work.
    assert auto.conv_kind((1, 14, 14, 6), (5, 5, 6, 16), (1, 1), NO_PAD) == \
        auto.conv_kind((512, 14, 14, 6), (5, 5, 6, 16), (1, 1), NO_PAD) == "small"
    # Stride shrinks the output, so the work: 13x13 -> 7x7 outputs.
    assert auto.conv_kind((8, 13, 13, 64), (3, 3, 64, 64), (2, 2), NO_PAD) == "deep"
    assert auto.conv_kind((8, 13, 13, 8), (3, 3, 8, 16), (2, 2), NO_PAD) == "small"


def test_every_row_resolves_to_an_available_backend_and_never_to_cuda():
    names = backends.available()
    for key, name in auto.choices().items():
        assert name in names and name not in ("cuda", "auto", "reference"), (key, name)


def test_a_small_conv_runs_on_its_rows_backend_and_matches_the_reference(rng):
    x = rng.standard_normal((2, 6, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 3, 6, 4)).astype(np.float32)
    y, (backend, _) = auto.conv2d_forward(x, w, None, (1, 1), NO_PAD)
    assert backend is auto._pick("conv2d", "small")
    ref, _ = backends.get("reference").conv2d_forward(x, w, None, (1, 1), NO_PAD)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------- routing derived from the specs


def test_every_op_of_the_contract_is_routed_by_a_generated_function():
    from fastcnn.backends import _specs
    auto_backend = backends.get("auto")
    for spec in _specs.SPECS.values():
        for op in spec.ops:
            fn = getattr(auto, op)
            assert fn.__name__ == op and auto_backend.implements(op)
            assert getattr(auto_backend, op) is fn   # a plain attribute, no wrapper
        if spec.routing_family in auto.KINDS:
            assert any(family == spec.routing_family for family, _ in auto.PREFERENCES)
        else:
            assert (spec.routing_family, "any") in auto.PREFERENCES, spec.name


def test_every_row_resolves_for_every_op_of_its_family():
    # One entry per row when its ops agree; "none" would mean no backend of the row
    # is available and implements an op of the family.
    for key, name in auto.choices().items():
        assert not name.startswith("none"), (key, name)


def test_a_forward_context_takes_its_backward_to_the_same_backend(rng):
    x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    y, (backend, inner) = auto.depthwise_conv2d_forward(x, w, None, (1, 1), NO_PAD)
    assert backend is auto._pick("depthwise_conv2d")
    dx, dw, db = auto.depthwise_conv2d_backward(np.ones_like(y), (backend, inner), need_dx=False)
    assert dx is None and db is None and dw.shape == w.shape
    loss, dlogits = auto.sparse_softmax_cross_entropy(x[:, 0, 0, :], np.array([0, 2]))
    assert dlogits.shape == (2, 3)


def test_the_fused_forward_returns_the_conv_backends_contexts(rng):
    x = rng.standard_normal((2, 6, 6, 8)).astype(np.float32)
    w = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
    out = auto.conv2d_maxpool2d_forward(x, w, None, (1, 1), ((1, 1), (1, 1)), (2, 2), (2, 2),
                                        NO_PAD)
    conv_backend = auto._pick("conv2d", auto.conv_kind(x.shape, w.shape, (1, 1),
                                                       ((1, 1), (1, 1))))
    if out is None:
        assert not conv_backend.implements("conv2d_maxpool2d_forward")
        return
    y, (b1, _), (b2, _) = out
    assert b1 is b2 is conv_backend and y.shape == (2, 3, 3, 16)


@pytest.fixture
def fake_rows(monkeypatch):
    """A fake backend "fake" (relu6's pair and relu's forward only), put first in the
    rows of relu and relu_general; the picks are forgotten before and after."""
    import sys
    import types
    module = types.ModuleType("fastcnn_test_auto_fake", "A fake backend for the auto tests.")
    module.relu6_forward = lambda x: ("fake-y", "fake-ctx")
    module.relu6_backward = lambda dy, ctx: "fake-dx"
    module.relu_forward = lambda x: ("fake-y", "fake-ctx")   # no relu_backward
    monkeypatch.setitem(sys.modules, module.__name__, module)
    saved = dict(backends._REGISTRY), dict(backends._LOADED), dict(backends._FAILED)
    backends.register("fake", module.__name__)
    monkeypatch.setitem(auto.PREFERENCES, ("relu", "any"), ("fake", "im2col"))
    monkeypatch.setitem(auto.PREFERENCES, ("relu_general", "any"), ("fake", "im2col"))
    auto._resolved.clear()
    try:
        yield
    finally:
        auto._resolved.clear()
        for table, contents in zip((backends._REGISTRY, backends._LOADED, backends._FAILED),
                                   saved):
            table.clear()
            table.update(contents)


def test_pick_passes_over_a_backend_of_the_row_that_lacks_the_op(fake_rows):
    # relu: fake has the forward but not the backward, so it cannot serve the pair.
    assert auto._pick("relu").name == "im2col"
    # relu_general's family: fake has relu6 only; the others go to the next backend.
    assert auto._pick("relu_general", op="relu6").name == "fake"
    assert auto._pick("relu_general", op="leaky_relu").name == "im2col"
    y, (backend, ctx) = auto.relu6_forward(np.ones(3))
    assert (y, backend.name, ctx) == ("fake-y", "fake", "fake-ctx")
    assert auto.relu6_backward(np.ones(3), (backend, ctx)) == "fake-dx"
    assert auto.leaky_relu_forward(np.ones(3, np.float32))[1][0].name == "im2col"
    choices = auto.choices()
    assert choices["relu/any"] == "im2col"
    assert choices["relu_general/any relu6"] == "fake"
    assert choices["relu_general/any relu_general"] == "im2col"
    assert choices["relu_general/any leaky_relu"] == "im2col"
    assert "relu_general/any" not in choices


def test_info_shows_the_picks(fake_rows, capsys):
    from fastcnn.cli import main
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+relu_general/any relu6\s+fake$", out, re.MULTILINE)
    assert re.search(r"^\s+relu/any\s+im2col$", out, re.MULTILINE)


def test_a_row_none_of_whose_backends_implements_the_op_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(auto.PREFERENCES, ("tanh", "any"), ("cuda_that_is_not", "fake"))
    monkeypatch.setattr(auto, "_resolved", {})
    with pytest.raises(RuntimeError, match=r"none of \('cuda_that_is_not', 'fake'\) is "
                                           r"available and implements \['tanh_forward', "
                                           r"'tanh_backward'\]"):
        auto.tanh_forward(np.ones(2))
    assert auto.choices()["tanh/any"].startswith("none (")
    monkeypatch.delitem(auto.PREFERENCES, ("tanh", "any"))
    with pytest.raises(RuntimeError, match=r"no PREFERENCES row for \('tanh', 'any'\)"):
        auto.tanh_forward(np.ones(2))
