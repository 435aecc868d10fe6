"""Compiles every CUDA kernel of the backend to PTX, for float32 and float64, without a GPU.

    NUMBA_ENABLE_CUDASIM=0 python -m fastcnn.backends._cuda.ptx_check [--json]

Why: the CUDA simulator runs plain Python, so it accepts code that the device compiler
rejects (a Python list in a kernel, an untyped constant); compiling to PTX catches that.
It also proves that the float32 kernels do no float64 arithmetic (no ``.f64`` instruction
in their PTX), which would cost a GPU up to 64x.

Needs numba-cuda with NVRTC (``pip install nvidia-cuda-nvrtc`` or ``numba-cuda[cu13]``)
and NVVM (the CUDA toolkit); needs no GPU and no driver. The simulator must be off: it
replaces the compiler.

Exit status: 0 every kernel compiled (and float32 ones are float64-free); 1 some kernel
failed; 2 the simulator is on; 3 the compiler toolchain is missing (the reason is printed).
"""
from __future__ import annotations

import json
import re
import sys

#: Compute capability the PTX is generated for (Ampere, numba-cuda's usual default).
CC = (8, 0)

# Exceptions that mean "no compiler here", not "the kernel is wrong".
_TOOLCHAIN_ERRORS = ("DynamicLibNotFoundError", "NvrtcSupportError", "NvvmSupportError",
                     "NvvmError", "CudaSupportError", "LinkerError")
_F64_OP = re.compile(r"^\s*[a-z][\w.]*\.f64\b", re.MULTILINE)


def run() -> dict:
    """``{"kernels": {name: {dtype: "ok" | error}}, "f64_ops": {name: {dtype: count}},
    "toolchain_missing": reason or None, "simulator": bool}``; ``f64_ops`` counts the
    float64 instructions of each compiled variant (0 is required of float32 ones)."""
    from numba import config

    report = {"kernels": {}, "f64_ops": {}, "toolchain_missing": None,
              "simulator": bool(config.ENABLE_CUDASIM)}
    if config.ENABLE_CUDASIM:
        return report
    from numba import cuda

    from . import KERNELS
    from ._jit import signature_for

    for name, (_, variants) in sorted(KERNELS.items()):
        results = report["kernels"].setdefault(name, {})
        for dtype, dispatcher in variants.items():
            try:
                ptx, _ = cuda.compile_ptx(dispatcher.py_func, signature_for(name, dtype),
                                          cc=CC)
            except Exception as exc:  # noqa: BLE001 - reported per kernel, never hidden
                kind = type(exc).__name__
                if kind in _TOOLCHAIN_ERRORS or "libnvrtc" in str(exc) or "NVVM" in str(exc):
                    report["toolchain_missing"] = f"{kind}: {exc}"
                    return report
                results[dtype.name] = f"{kind}: {exc}"
                continue
            results[dtype.name] = "ok"
            report["f64_ops"].setdefault(name, {})[dtype.name] = len(_F64_OP.findall(ptx))
    return report


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    report = run()
    if "--json" in argv:
        print(json.dumps(report))
    if report["simulator"]:
        print("ptx_check: NUMBA_ENABLE_CUDASIM is on; the simulator replaces the compiler. "
              "Run with NUMBA_ENABLE_CUDASIM=0.", file=sys.stderr)
        return 2
    if report["toolchain_missing"]:
        print(f"ptx_check: no CUDA compiler toolchain: {report['toolchain_missing']}",
              file=sys.stderr)
        return 3
    failed = 0
    for name, results in report["kernels"].items():
        for dtype, result in results.items():
            if result != "ok":
                failed += 1
                print(f"FAILED {name} [{dtype}]: {result}", file=sys.stderr)
    upcast = {k: v["float32"] for k, v in report["f64_ops"].items() if v.get("float32")}
    for name, count in upcast.items():
        print(f"FAILED {name} [float32]: {count} float64 instructions in the PTX",
              file=sys.stderr)
    total = sum(len(r) for r in report["kernels"].values())
    if "--json" not in argv:
        print(f"ptx_check: {total - failed} of {total} kernel variants compiled to PTX "
              f"(cc {CC[0]}.{CC[1]}); float32 kernels with float64 arithmetic: {len(upcast)}")
    return 1 if failed or upcast else 0


if __name__ == "__main__":
    sys.exit(main())
