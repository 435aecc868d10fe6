"""Whole-model benchmarks: the four standard models (benchmarks/_cases.py MODELS).

* train step: ``model.train_on_batch(x, y)`` (forward, loss, backward, Adam update) on
  every backend from ``_cases.model_backends()`` against a PyTorch ``nn.Sequential`` built
  from the same layer list (zero_grad, forward, loss, backward, Adam step, ``.item()``);
* inference: the Fashion-MNIST CNN's ``predict(x, batch_size=len(x))`` (batch 1: latency,
  batch 128: throughput) against a ``torch.no_grad()`` forward plus softmax.

Fixed random data (``_cases.model_data``): the time of a step does not depend on what
the numbers are, and a fixed batch keeps every round identical.
"""
import numpy as np
import pytest

from fastcnn import backends

import _cases

TORCH = _cases.torch_or_none()
PEERS = _cases.model_backends() + ["torch"]


def _case_id(case):
    return f"{case[0]}_b{case[1]}"


def _skip_unless_runnable(peer, case):
    if peer == "torch" and TORCH is None:
        pytest.skip(_cases.TORCH_MISSING)
    if peer == "reference" and case not in _cases.REFERENCE_TRAIN_CASES:
        pytest.skip(_cases.REFERENCE_TOO_SLOW)


def _same_size(spec, fastcnn_model, torch_model):
    """The two models must hold the same parameters, or the comparison means nothing."""
    n_torch = sum(p.numel() for p in torch_model.parameters())
    assert fastcnn_model.count_params() == n_torch, (spec.id, fastcnn_model.count_params(),
                                                     n_torch)


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("case", _cases.TRAIN_CASES, ids=_case_id)
def test_train_step(timed, case, peer):
    _skip_unless_runnable(peer, case)
    spec, batch = _cases.MODELS[case[0]], case[1]
    info = dict(kind="train", op=spec.id, pass_="train", shape=f"b{batch}",
                shape_desc=f"{spec.title}, batch {batch}", backend=peer, batch=batch,
                flops=3 * _cases.model_flops(spec, batch), samples=batch)
    group = f"train step | {spec.title}, batch {batch}"
    if peer == "torch":
        model, loss_fn = _cases.build_torch(spec)
        _same_size(spec, _cases.build_fastcnn(spec), model)
        optimizer = _cases.torch_adam(model)
        xt, yt = _cases.torch_model_data(spec, batch)
        model.train()
        timed(lambda: _cases.torch_train_step(model, loss_fn, optimizer, xt, yt),
              group=group, **info)
        return
    model = _cases.build_fastcnn(spec)
    x, y = _cases.model_data(spec, batch)
    with backends.use_backend(peer):
        timed(lambda: model.train_on_batch(x, y), group=group, **info)


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("case", _cases.INFER_CASES, ids=_case_id)
def test_inference(timed, case, peer):
    _skip_unless_runnable(peer, case)
    spec, batch = _cases.MODELS[case[0]], case[1]
    info = dict(kind="infer", op=spec.id, pass_="infer", shape=f"b{batch}",
                shape_desc=f"{spec.title}, batch {batch}", backend=peer, batch=batch,
                flops=_cases.model_flops(spec, batch), samples=batch)
    group = f"inference | {spec.title}, batch {batch}"
    if peer == "torch":
        model, _ = _cases.build_torch(spec)
        model.eval()
        xt, _ = _cases.torch_model_data(spec, batch)

        def predict():
            with TORCH.no_grad():
                return TORCH.softmax(model(xt), dim=1)

        timed(predict, group=group, **info)
        return
    model = _cases.build_fastcnn(spec)
    x, _ = _cases.model_data(spec, batch)
    with backends.use_backend(peer):
        out = model.predict(x, batch_size=batch)
        assert out.shape == (batch, spec.classes) and out.dtype == np.float32
        timed(lambda: model.predict(x, batch_size=batch), group=group, **info)
