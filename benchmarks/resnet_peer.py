"""The small Fashion-MNIST ResNet of examples/fashion_mnist_resnet.py against the same model
in PyTorch on the CPU: one train step (Adam), interleaved in one process.

    python benchmarks/resnet_peer.py --threads 1 --batch 128 --rounds 20

Both models start from the same weights (fastcnn's, copied into PyTorch: HWIO -> OIHW conv
kernels, (in, out) -> (out, in) dense kernels, BatchNormalization with PyTorch's momentum
``1 - 0.99`` and epsilon 1e-3). Before timing, one forward in training mode must give the
same loss on both sides (rtol 1e-4). PyTorch runs channels_last (its faster layout on the
CPU for these convs). Prints a markdown row: medians of the rounds, and the ratio PyTorch
ms / fastcnn ms (above 1: fastcnn faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    return p.parse_args(argv)


ARGS = parse(sys.argv[1:])
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                "examples"))

import fastcnn  # noqa: E402, I001
import numpy as np  # noqa: E402

import fashion_mnist_resnet as example  # noqa: E402

try:
    import torch  # noqa: E402
    from torch import nn  # noqa: E402
except ImportError:   # an optional peer
    print("PyTorch is not installed (pip install torch==2.13.0): nothing to compare")
    sys.exit(0)


class TorchBlock(nn.Module):
    """TensorFlow's 'same' with stride 2 on an even size pads one row/column at the
    bottom/right only; PyTorch's padding=1 pads both sides: pad explicitly there."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        self.a = nn.Conv2d(cin, cout, 3, stride, padding=1 if stride == 1 else 0, bias=False)
        self.a_bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.b = nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
        self.b_bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.proj_bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x):
        short = x if self.proj is None else self.proj_bn(self.proj(x))
        a_in = x if self.stride == 1 else nn.functional.pad(x, (0, 1, 0, 1))
        y = self.b_bn(self.b(torch.relu(self.a_bn(self.a(a_in)))))
        return torch.relu(short + y)


class TorchResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), blocks=2, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0], eps=1e-3, momentum=0.01)
        layers, cin = [], widths[0]
        for stage, cout in enumerate(widths):
            for block in range(blocks):
                layers.append(TorchBlock(cin, cout, 2 if stage > 0 and block == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        return self.fc(self.blocks(x).mean(dim=(2, 3)))


def copy_weights(model, net):
    """fastcnn's weights into the PyTorch model (same architecture, Keras layer names)."""
    def conv(name, module):
        module.weight.data = torch.from_numpy(
            np.ascontiguousarray(model.get_layer(name).kernel.transpose(3, 2, 0, 1)))

    def bn(name, module):
        layer = model.get_layer(name)
        module.weight.data = torch.from_numpy(layer.gamma.copy())
        module.bias.data = torch.from_numpy(layer.beta.copy())
        module.running_mean.data = torch.from_numpy(layer.moving_mean.copy())
        module.running_var.data = torch.from_numpy(layer.moving_variance.copy())

    conv("stem_conv", net.stem)
    bn("stem_bn", net.stem_bn)
    k = 0
    for stage in range(3):
        for block in range(2):
            tb, name = net.blocks[k], f"s{stage + 1}b{block + 1}"
            conv(f"{name}_a_conv", tb.a)
            bn(f"{name}_a_bn", tb.a_bn)
            conv(f"{name}_b_conv", tb.b)
            bn(f"{name}_b_bn", tb.b_bn)
            if tb.proj is not None:
                conv(f"{name}_proj", tb.proj)
                bn(f"{name}_proj_bn", tb.proj_bn)
            k += 1
    dense = model.get_layer("probs")
    net.fc.weight.data = torch.from_numpy(np.ascontiguousarray(dense.kernel.T))
    net.fc.bias.data = torch.from_numpy(dense.bias.copy())


def main():
    torch.set_num_threads(ARGS.threads)
    fastcnn.set_random_seed(0)
    model = example.build_model()
    model.compile(fastcnn.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    net = TorchResNet().to(memory_format=torch.channels_last)
    copy_weights(model, net)
    rng = np.random.default_rng(0)
    x = rng.random((ARGS.batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, ARGS.batch)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(memory_format=torch.channels_last)
    yt = torch.from_numpy(y)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    net.train()
    with torch.no_grad():
        torch_loss = float(loss_fn(net(xt), yt))
    probs = model(x, training=True)   # a training-mode forward, as the step's
    ours = float(np.mean(-np.log(np.asarray(probs)[np.arange(len(y)), y])))
    if not np.isclose(ours, torch_loss, rtol=1e-4):
        raise SystemExit(f"the two models disagree before timing: loss {ours} (fastcnn) vs "
                         f"{torch_loss} (PyTorch)")

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    def fastcnn_step():
        return model.train_on_batch(x, y)

    for _ in range(ARGS.warmup):
        torch_step()
        fastcnn_step()
    times = {"fastcnn": [], "torch": []}
    for _ in range(ARGS.rounds):   # interleaved: both see the same machine state
        for name, step in (("fastcnn", fastcnn_step), ("torch", torch_step)):
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    f_ms = statistics.median(times["fastcnn"]) * 1e3
    t_ms = statistics.median(times["torch"]) * 1e3
    print(f"| ResNet (3x2 blocks, 176k params), train step b{ARGS.batch}, {ARGS.threads} "
          f"thread(s) | {f_ms:.1f} | {t_ms:.1f} | {t_ms / f_ms:.2f} | (loss check: "
          f"{ours:.5f} vs {torch_loss:.5f}; torch {torch.__version__})")


if __name__ == "__main__":
    main()
