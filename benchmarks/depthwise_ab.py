"""Two builds of the depthwise kernels in ONE process, calls alternating: a before/after
that the host's swings between processes do not blur.

    git worktree add /tmp/old <commit> && (cd /tmp/old && python setup.py build_ext --inplace)
    OMP_NUM_THREADS=1 FASTCNN_NUM_THREADS=1 taskset -c 1 \\
        python benchmarks/depthwise_ab.py /tmp/old/fastcnn/_ext_depthwise*.so

The other build is loaded as a second module (``oldbuild._ext_depthwise``; its module
init has the same name) beside this checkout's. MobileNetV2's depthwise shapes at batch 8
as in test_bench_depthwise.py, the arrays NumPy-placed as there; the forward and the
backward (dW, db and dx in one call), each build placing its outputs as its backend does
(``output_offset`` where the build has it, else on a line), from
fastcnn.backends._buffers for both. Prints each build's median and the median of the
paired ratios new / old.
"""
import importlib.util
import sys
import time

import fastcnn  # noqa: F401  (before NumPy: thread settings)
import numpy as np

from fastcnn import _extensions, shapes
from fastcnn.backends import _buffers

# MobileNetV2's depthwise layers (test_bench_depthwise.py's), then MobileNet's (V1) that
# V2 lacks.
SHAPES = [(112, 32, 1), (112, 96, 2), (56, 144, 1), (28, 192, 1), (14, 384, 1), (14, 576, 2),
          (7, 960, 1), (56, 128, 1), (28, 256, 1), (28, 256, 2), (14, 512, 1), (7, 1024, 1)]


def load_other(path):
    spec = importlib.util.spec_from_file_location("oldbuild._ext_depthwise", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _placed(mod, src, shape, s, for_dx, pt, pl):
    """An output of ``shape`` placed as that build's backend places it: ABI 6's
    output_offset (a page offset; told the pads), ABI 4's, ABI 3's (a line offset), else
    on a line."""
    if getattr(mod, "ABI_VERSION", 0) >= 6:
        offset = mod.output_offset(src, shape, 1, 3, 3, s, s, pt, pl, for_dx)
        return _buffers.empty(shape, np.float32, offset=offset, align=_buffers.PAGE)
    if getattr(mod, "ABI_VERSION", 0) >= 4:
        offset = mod.output_offset(src, shape, 1, 3, 3, s, s, for_dx)
        return _buffers.empty(shape, np.float32, offset=offset, align=_buffers.PAGE)
    offset = 0
    if hasattr(mod, "output_offset"):
        offset = mod.output_offset(src, 1, 3, 3, s, s, for_dx)
    return _buffers.empty(shape, np.float32, offset=offset)


def one_call(mod, pass_, x, wt, b, dy, s, pt, pl):
    if pass_ == "fwd":
        y = _placed(mod, x, dy.shape, s, False, pt, pl)
        mod.forward(x, wt, b, y, 3, 3, s, s, pt, pl, 1)
    else:
        dx = _placed(mod, dy, x.shape, s, True, pt, pl)
        mod.backward(x, dy, wt, dx, 3, 3, s, s, pt, pl, 1, True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: depthwise_ab.py PATH_TO_THE_OTHER_BUILDS_ext_depthwise.so")
    old, new = load_other(argv[0]), _extensions.modules["depthwise"]
    rng = np.random.default_rng(0)
    for h, c, s in SHAPES:
        x = rng.standard_normal((8, h, h, c), dtype=np.float32)
        wt = rng.standard_normal((9, c), dtype=np.float32)
        b = rng.standard_normal(c, dtype=np.float32)
        (ho, wo), ((pt, _), (pl, _)) = shapes.window_output_shape((h, h), (3, 3), (s, s),
                                                                   "same")
        dy = rng.standard_normal((8, ho, wo, c), dtype=np.float32)
        rounds = max(20, int(0.6 / (h * h * c * 8 * 18 / 80e9)))
        cells = []
        for pass_ in ("fwd", "bwd"):
            t_old, t_new = [], []
            for i in range(rounds):
                pair = ((old, t_old), (new, t_new))
                for mod, times in (pair if i % 2 else pair[::-1]):
                    t0 = time.perf_counter()
                    one_call(mod, pass_, x, wt, b, dy, s, pt, pl)
                    times.append(time.perf_counter() - t0)
            ratio = float(np.median(np.array(t_new) / np.array(t_old)))
            cells.append(f"{pass_} old {np.median(t_old) * 1e3:.3f} new "
                         f"{np.median(t_new) * 1e3:.3f} ms, new/old {ratio:.3f}")
        print(f"{h:3d}x{c:<3d} s{s}  " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
