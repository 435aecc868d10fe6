"""pytest-benchmark set-up: pinned threads, the GEMM ceiling, one way to time a case.

Run with ``pytest benchmarks --benchmark-only`` (pyproject's addopts skip benchmarks
otherwise; this folder is outside ``testpaths`` so a plain ``pytest`` never collects it).

Threads: BLAS and OpenMP runtimes read their thread count once, when they load, so the
count is fixed HERE, at the top of this module, before anything imports NumPy: from
``--threads N`` on the command line, else ``FASTCNN_BENCH_THREADS``, else 1.
"""
import os
import sys

import _threads

_ENV = os.environ.get(_threads.ENV_VAR)
_ARGV = _threads.threads_from_argv(sys.argv)
if _ENV is not None and _ARGV is not None and _threads.parse_threads(_ENV, _threads.ENV_VAR) != _ARGV:
    raise SystemExit(f"--threads {_ARGV} contradicts {_threads.ENV_VAR}={_ENV}; give one of them")
THREADS = _ARGV if _ARGV is not None else _threads.parse_threads(_ENV or "1", _threads.ENV_VAR)
_LOADED_TOO_EARLY = _threads.pin_environment(THREADS)

import datetime  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastcnn  # noqa: E402
from fastcnn import backends  # noqa: E402

import _cases  # noqa: E402
import summarize  # noqa: E402

# The optional peer is imported here, after the pinning, so that its OpenMP/MKL pools
# start with the pinned count (None when torch is absent: its benchmarks skip).
TORCH = _cases.torch_or_none()

SGEMM_N_DEFAULT = 2048
_SGEMM_KEY = pytest.StashKey[dict]()
_LOAD_START = None  # 1-minute load average when the session starts


def pytest_addoption(parser):
    group = parser.getgroup("fastcnn benchmarks")
    group.addoption("--threads", type=int, default=None,
                    help=f"threads for every runtime (default: ${_threads.ENV_VAR} or 1); "
                         f"read from the command line before NumPy loads")
    group.addoption("--sgemm-size", type=int, default=SGEMM_N_DEFAULT,
                    help="n of the n x n x n float32 np.dot that measures the SGEMM ceiling "
                         f"(default {SGEMM_N_DEFAULT})")


def pytest_configure(config):
    given = config.getoption("threads")
    if given is not None and given != THREADS:
        # pytest.main([...]) from a script: sys.argv was not this command line, so the
        # libraries were pinned to another count before this option could be read.
        raise pytest.UsageError(
            f"--threads {given} reached pytest after the thread count was pinned to "
            f"{THREADS}; set {_threads.ENV_VAR}={given} in the environment instead")
    _threads.pin_runtime(THREADS)
    global _LOAD_START
    _LOAD_START = _loadavg()


def _torch_version():
    return TORCH.__version__ if TORCH is not None else None


def pytest_report_header(config):
    info = _threads.describe()
    lines = [
        f"fastcnn benchmarks: threads={THREADS} (nproc={os.cpu_count()}); "
        + ", ".join(f"{k}={v}" for k, v in info.items() if k != _threads.ENV_VAR),
        f"fastcnn backends: available={backends.available()} "
        f"unavailable={backends.unavailable()}; model backends={_cases.model_backends()}",
        f"PyTorch peer: {_torch_version() or 'absent (' + _cases.TORCH_MISSING + ')'}",
    ]
    if _LOAD_START is not None:
        busy = _LOAD_START + THREADS > (os.cpu_count() or 1) + 0.5
        lines.append(f"load average (1 min) at start: {_LOAD_START:.2f} on {os.cpu_count()} "
                     f"CPUs" + ("; WARNING: other processes are using the cores, timings "
                                "(multi-threaded ones most) will be noisy" if busy else ""))
    if _LOADED_TOO_EARLY:
        lines.append(f"WARNING: {_LOADED_TOO_EARLY} were imported before benchmarks/conftest.py "
                     f"pinned the thread variables; runtime pinning was applied instead "
                     f"(check the *_runtime values above)")
    if TORCH is not None and TORCH.__version__.split("+")[0] != _cases.TORCH_VERSION:
        lines.append(f"WARNING: torch {TORCH.__version__} is not the pinned peer "
                     f"torch=={_cases.TORCH_VERSION}")
    return lines


def _measure_sgemm(n: int, rounds: int = 7) -> dict:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.dot(a, b, out=out)  # warm: thread pool start, page faults of `out`
    times = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.dot(a, b, out=out)
        times.append(time.perf_counter() - t0)
    cpu_per_wall = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    flops = 2.0 * n ** 3
    # A ceiling is what the machine CAN do: the fastest round. On a shared machine the
    # others are slowed by neighbours (cpu_per_wall below the thread count shows it).
    numpy_gflops = flops / min(times) / 1e9
    # And NumPy's BLAS may not use the machine's widest vectors (_cases.FASTCNN_GEMM_CASE):
    # the ceiling is the better of it and fastcnn's own GEMM.
    ceiling, own, which = _cases.flop_ceiling(numpy_gflops)
    return {"n": n, "best_s": min(times), "median_s": statistics.median(times),
            "gflops": ceiling, "numpy_gflops": numpy_gflops, "fastcnn_gflops": own,
            "ceiling": which,
            "median_gflops": flops / statistics.median(times) / 1e9,
            "cpu_per_wall": cpu_per_wall, "threads": THREADS}


@pytest.fixture(scope="session")
def sgemm(request):
    """This machine's float32 GEMM rate at the pinned threads, measured once per run: the
    practical ceiling every op's GFLOP/s is compared with (DESIGN.md section 6), the better
    of NumPy's 2048^3 SGEMM and fastcnn's own GEMM (``_cases.fastcnn_gemm_gflops``)."""
    result = _measure_sgemm(request.config.getoption("sgemm_size"))
    request.config.stash[_SGEMM_KEY] = result
    return result


@pytest.fixture
def rng():
    return np.random.default_rng(_cases.SEED)


@pytest.fixture
def timed(benchmark, sgemm):
    """``timed(fn, group=..., flops=None, samples=None, **info)`` times ``fn``.

    One untimed call first: it warms JIT and primitive caches, and a NotImplementedError
    from a backend that lacks the op becomes a skip carrying the backend's message (the
    case is never timed on another backend). Then pytest-benchmark times ``fn`` under the
    command line's rounds/max-time, and extra_info gets the thread count, the SGEMM
    ceiling, CPU/wall and load while timed, and from the median: ms, GFLOP/s, fraction of
    SGEMM, samples/s.
    """
    def run(fn, *, group, flops=None, samples=None, **info):
        benchmark.group = group
        extra = benchmark.extra_info
        extra.update(info)
        extra.update(threads=THREADS, flops=flops, samples=samples,
                     sgemm_gflops=sgemm["gflops"], sgemm_n=sgemm["n"],
                     torch_version=_torch_version())
        try:
            fn()
        except NotImplementedError as exc:
            pytest.skip(f"not implemented: {exc}")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = benchmark(fn)
        # CPU seconds per wall second of this process while it was timed: below 1 on one
        # thread means neighbours took the core (the machine is shared), a hint to distrust
        # the row; above 1 means several threads really worked.
        extra["cpu_per_wall"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        extra["loadavg_1m"] = _loadavg()
        stats = getattr(benchmark, "stats", None)
        if stats is not None and stats.stats.rounds:
            median = stats.stats.median
            extra["median_ms"] = median * 1e3
            if flops:
                extra["gflops"] = flops / median / 1e9
                extra["frac_sgemm"] = extra["gflops"] / sgemm["gflops"]
            if samples:
                extra["samples_per_s"] = samples / median
        return result

    return run


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["fastcnn"] = _run_info(config)


def _loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _run_info(config) -> dict:
    return {
        "loadavg_1m_start": _LOAD_START,
        "loadavg_1m_end": _loadavg(),
        "threads": THREADS,
        "thread_info": _threads.describe(),
        "sgemm": config.stash.get(_SGEMM_KEY, None),
        "backends": backends.available(),
        "default_backend": backends.get_backend(),
        "fastcnn_version": fastcnn.__version__,
        "numpy_version": np.__version__,
        "torch_version": _torch_version(),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, config):
    result = config.stash.get(_SGEMM_KEY, None)
    if not result:
        return
    own = result.get("fastcnn_gflops")
    terminalreporter.write_line(
        f"SGEMM ceiling: {result['gflops']:.1f} GFLOP/s ({result.get('ceiling', 'numpy')}); "
        f"{result['n']}^3 float32 np.dot at {THREADS} thread(s): best "
        f"{result['best_s'] * 1e3:.1f} ms = {result['numpy_gflops']:.1f} GFLOP/s (median "
        f"{result['median_gflops']:.1f} GFLOP/s, CPU/wall {result['cpu_per_wall']:.2f}); "
        f"fastcnn's GEMM " + (f"{own:.1f} GFLOP/s" if own else "not measured (no cython)"))
    # The same tables summarize.py makes from --benchmark-json, with the ratios to
    # PyTorch. pytest-benchmark keeps this run's results on its (private) session object;
    # if a future version moves them, only this convenience print is lost.
    session = getattr(config, "_benchmarksession", None)
    benches = getattr(session, "benchmarks", None)
    if not benches:
        return
    doc = {"benchmarks": [b.as_dict(include_data=False) for b in benches if b],
           "fastcnn": _run_info(config),
           "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    terminalreporter.write_sep("-", "fastcnn summary (ratio = PyTorch median / fastcnn median)")
    terminalreporter.write(summarize.render([doc], ["this run"]))
