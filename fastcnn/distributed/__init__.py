"""Data-parallel training on several processes through MPI (mpi4py), Horovod's model.

fastcnn does not start or manage processes: an MPI launcher does (``mpiexec``, ``srun``),
and every process runs the same script::

    import fastcnn
    fastcnn.distributed.init()          # once, before building models
    model = ...                         # the same architecture on every process
    model.fit(x, y, batch_size=256)     # batch_size is the GLOBAL batch

    $ mpiexec -n 4 python train.py

After :func:`init` with more than one process, ``fit`` needs no other change:

* each process takes its contiguous share of every global batch (shares differ by at most
  one sample; a short last batch may leave a process with none);
* the gradients are summed with in-place ``MPI_Allreduce`` on a few preallocated flat
  buffers, each process weighted by its share, so the step equals the one a single
  process takes on the whole batch, up to float rounding;
* at the start of ``fit`` the processes check that they built the same architecture (a
  ValueError names the first process and layer that differ), then rank 0's weights and
  optimizer state are broadcast;
* the loss and the metrics are summed over the processes (metrics by their counts, so the
  accuracy is exactly the single-process one); every process sees the same logs, so
  EarlyStopping, ReduceLROnPlateau and the like decide the same everywhere;
* only rank 0 prints (progress bar, callback messages) and writes files (``model.save``,
  ``save_weights``, ModelCheckpoint, CSVLogger); the other ranks return from those calls
  at once;
* ``evaluate`` shares out the batches the same way; ``predict`` shares them out and
  returns the WHOLE result, in input order, on every process (as Keras's multi-worker
  strategy does), so code written for one process keeps working. Both are collective
  calls: every process makes them (or uses :func:`local` to work alone);
* ImageDataGenerator iterators (``flow``, ``flow_from_directory``) give each process only
  its part of each global batch: a process decodes only its own files. Any other iterator
  (a Python generator) is taken to yield this process's own batches, as in Horovod.

What does not match one process exactly: BatchNormalization normalises with each
process's own batch statistics (Horovod without SyncBatchNorm; the moving statistics are
averaged over the processes at the end of every epoch so that all processes keep one
model), and Dropout draws its masks per process.

Errors: an exception that escapes on one process prints its traceback and aborts every
process (``MPI_Abort``) instead of leaving the others waiting forever; errors that all
processes detect together (a global batch smaller than the number of processes, processes
that disagree on the architecture or on the data sizes) are raised on every process and
can be caught.

Early exits: a process that leaves while the others still need it (``sys.exit(0)`` or
``sys.exit(1)`` in a callback, the end of a script that skipped a ``fit`` the others run)
tells the others so on its way out (an atexit hook); a process that then sits in one of
fastcnn's collective calls for :data:`EXIT_STUCK_SECONDS` prints who left and aborts the
job (``MPI_Abort``), instead of waiting forever. A process that is only busy with work of
its own (rank 0 saving a model after the others finished) is not disturbed. A process
that dies without exit handlers (``os._exit``, a signal) is ended by the launcher: MPICH's
and Open MPI's end the job when one process exits without ``MPI_Finalize`` (MPICH reports
the dead process's exit status, so ``os._exit(0)`` ends the job with status 0). The watch
needs MPI_THREAD_MULTIPLE (mpi4py's default); under a lower thread level only the
launcher's own checks remain.

Threads: N processes on one machine each start one thread per core unless told
otherwise; pin them (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``NUMBA_NUM_THREADS``)
to cores / N. :func:`init` warns when they would oversubscribe the machine.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
import threading
import time
import warnings

from ._strategy import SingleProcess, shard_bounds

__all__ = ["init", "is_initialized", "rank", "size", "local_rank", "local_size",
           "is_primary", "barrier", "broadcast", "local", "current", "shard_bounds",
           "INSTALL_HINT"]

INSTALL_HINT = 'pip install "fastcnn[distributed]"'

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")

_SINGLE = SingleProcess()
_LOCAL = SingleProcess(warn_if_launched=False)
_mpi = None         # the MPI strategy, once init() ran
_local_depth = 0    # > 0 inside local()
_exit_watch = None  # the _ExitWatch of this process, once init() ran with 2+ processes

#: After a process has left, how long a thread of another process may sit in the same
#: collective call before the job is aborted (a call that was just completing when the
#: notice came moves on well within it).
EXIT_STUCK_SECONDS = 1.0
_EXIT_POLL_SECONDS = 0.1
_EXIT_TAG = 15


def _missing_mpi(exc) -> ImportError:
    return ImportError(
        f"fastcnn.distributed needs mpi4py and an MPI library: {INSTALL_HINT} installs "
        f"mpi4py and the MPICH wheel (a system MPI works too, with pip install mpi4py) "
        f"[{type(exc).__name__}: {exc}]")


def _import_mpi():
    """mpi4py's MPI module (importing it initialises MPI, as mpi4py does by default)."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as exc:
        # RuntimeError/OSError: mpi4py is there but cannot load an MPI library.
        raise _missing_mpi(exc) from exc
    return MPI


def init() -> None:
    """Joins the processes started by the MPI launcher (``MPI_COMM_WORLD``); idempotent.

    Works without a launcher too (one process, ``size() == 1``). With more than one
    process it installs an excepthook that aborts every process when one raises, warns
    when the processes would oversubscribe the cores, and, when the active backend is
    'cuda', gives each process of a machine its own GPU (local rank modulo GPUs).
    """
    global _mpi
    if _mpi is not None:
        return
    MPI = _import_mpi()
    if MPI.Is_finalized():
        raise RuntimeError("MPI has already been finalised in this process; "
                           "fastcnn.distributed.init() must come before MPI.Finalize()")
    if not MPI.Is_initialized():   # mpi4py.rc.initialize = False leaves it to us
        MPI.Init_thread()
    from ._strategy import MPIStrategy

    strategy = MPIStrategy(MPI, MPI.COMM_WORLD)
    _mpi = strategy
    if strategy.size > 1:
        _install_excepthook(strategy)
        _install_exit_watch(strategy, MPI)
        _warn_oversubscription(strategy)
    strategy.select_device()


def is_initialized() -> bool:
    """Whether :func:`init` has run in this process."""
    return _mpi is not None


@contextlib.contextmanager
def local():
    """``with fastcnn.distributed.local(): ...``: this process works alone in the block.

    ``fit``, ``evaluate`` and ``predict`` are collective calls under MPI (every process
    must make them); inside this block they run on this process's data alone, with no
    communication, and ``save`` writes on this process too. For work one process does by
    itself, e.g. ``if distributed.is_primary(): with distributed.local(): model.predict(x)``.
    """
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def current():
    """The active strategy: what ``fit``/``evaluate``/``predict`` call to share work out.

    The no-op :class:`SingleProcess` until :func:`init` (no mpi4py needed) and inside
    :func:`local`, else the MPI strategy. Library code uses this; scripts use
    :func:`rank`, :func:`size` ... (which :func:`local` does not change).
    """
    if _local_depth or _mpi is None:
        return _LOCAL if _local_depth else _SINGLE
    return _mpi


def _require_init(what):
    if _mpi is None:
        try:
            importlib.import_module("mpi4py")   # the package alone: does not start MPI
        except ImportError as exc:
            raise _missing_mpi(exc) from exc
        raise RuntimeError(f"fastcnn.distributed.{what}() needs fastcnn.distributed.init() "
                           f"to be called first (once, at the top of the script)")
    return _mpi


def rank() -> int:
    """This process's number, 0 .. size() - 1 (0 is the one that prints and saves)."""
    return _require_init("rank").rank


def size() -> int:
    """The number of processes (1 when the script runs without a launcher)."""
    return _require_init("size").size


def local_rank() -> int:
    """This process's number among the processes on the same machine."""
    return _require_init("local_rank").local_rank


def local_size() -> int:
    """The number of processes on this machine."""
    return _require_init("local_size").local_size


def is_primary() -> bool:
    """True on rank 0: the process that prints, plots and writes files."""
    return _require_init("is_primary").is_primary


def barrier() -> None:
    """Waits until every process gets here (e.g. after rank 0 saved a file the others read)."""
    _require_init("barrier").barrier()


def broadcast(obj, root=0):
    """``obj`` of process ``root`` on every process (any picklable object)."""
    return _require_init("broadcast").broadcast(obj, root)


def _install_excepthook(strategy):
    """An uncaught exception on one process would leave the others blocked in their next
    collective call forever: print the traceback, then MPI_Abort every process."""
    previous = sys.excepthook

    def abort_all(exc_type, exc, tb):
        try:
            sys.stderr.write(
                f"fastcnn.distributed: process {strategy.rank} of {strategy.size} stopped on "
                f"an uncaught {exc_type.__name__}; aborting all {strategy.size} processes "
                f"(MPI_Abort) so that none waits forever\n")
            previous(exc_type, exc, tb)
        finally:
            strategy.abort(1)

    sys.excepthook = abort_all


class _ExitWatch:
    """Ends the job when a process left and another waits for it in a collective call.

    Every process runs a daemon thread that polls (every 0.1 s, ``Iprobe`` on a
    communicator of its own) for the notices that leaving processes send from an atexit
    hook. Once a process has left, any thread of this process found in the same frame of
    :mod:`fastcnn.distributed._strategy` (where every collective call of fastcnn is made)
    for :data:`EXIT_STUCK_SECONDS` can never complete: the watch says who left and aborts
    every process.
    """

    def __init__(self, strategy, MPI):
        self.strategy, self.MPI = strategy, MPI
        self.comm = strategy.comm.Dup()   # collective, like the rest of init()
        self.gone: dict[int, float] = {}
        self.stop = threading.Event()
        from . import _strategy
        self.collective_file = os.path.normcase(os.path.abspath(_strategy.__file__))
        self.thread = threading.Thread(target=self._watch, name="fastcnn-exit-watch",
                                       daemon=True)

    def start(self):
        atexit.register(self.leave)
        self.thread.start()

    # ----------------------------------------------------------- the watch
    def _watch(self):
        status, seen = self.MPI.Status(), {}
        notice = bytearray(1)
        while not self.stop.wait(_EXIT_POLL_SECONDS):
            try:
                if self.MPI.Is_finalized():   # the script finalised MPI itself
                    return
                while self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=_EXIT_TAG,
                                       status=status):
                    source = status.Get_source()
                    self.comm.Recv([notice, self.MPI.BYTE], source=source, tag=_EXIT_TAG)
                    self.gone.setdefault(source, time.monotonic())
            except Exception:   # MPI is going away under us: nothing left to watch
                return
            if self.gone:
                call = self._stuck_call(seen)
                if call is not None and not self.stop.is_set():
                    self._abort(call)
                    return

    def _stuck_call(self, seen):
        """The name of a collective call some thread has sat in for EXIT_STUCK_SECONDS."""
        now = time.monotonic()
        me = threading.get_ident()
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            key = None
            while frame is not None:
                if os.path.normcase(frame.f_code.co_filename) == self.collective_file:
                    key = (id(frame), frame.f_lasti, frame.f_code.co_name)
                    break
                frame = frame.f_back
            if key is None:
                seen.pop(ident, None)
                continue
            first = seen.get(ident)
            if first is None or first[0] != key:
                seen[ident] = (key, now)
            elif now - first[1] >= EXIT_STUCK_SECONDS:
                return key[2]
        return None

    def _abort(self, call):
        strategy = self.strategy
        who = ", ".join(str(r) for r in sorted(self.gone))
        try:
            sys.stderr.write(
                f"fastcnn.distributed: process{'es' if len(self.gone) > 1 else ''} {who} "
                f"of {strategy.size} left (exited) while process {strategy.rank} waits for "
                f"it in a collective call ({call}); aborting all {strategy.size} processes "
                f"(MPI_Abort) so that none waits forever\n")
        finally:
            strategy.abort(1)

    # ------------------------------------------------------------- leaving
    def leave(self):
        """atexit: tells every other process that this one is leaving, then stops the
        watch (before mpi4py finalises MPI)."""
        if self.stop.is_set():
            return
        self.stop.set()
        requests = []
        try:
            if not self.MPI.Is_finalized():
                for rank in range(self.strategy.size):
                    if rank != self.strategy.rank:
                        requests.append(self.comm.Isend([bytearray(1), self.MPI.BYTE],
                                                        dest=rank, tag=_EXIT_TAG))
                # One-byte messages go out eagerly; do not hang here if one does not.
                deadline = time.monotonic() + 5.0
                while requests and not self.MPI.Request.Testall(requests) and \
                        time.monotonic() < deadline:
                    time.sleep(0.01)
        except Exception:
            pass
        self.thread.join(5.0)


def _install_exit_watch(strategy, MPI):
    global _exit_watch
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        return   # the watch thread would call MPI beside the main thread
    _exit_watch = _ExitWatch(strategy, MPI)
    _exit_watch.start()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _warn_oversubscription(strategy):
    # Said once per machine, by its first process.
    if strategy.local_size < 2 or strategy.local_rank != 0:
        return
    cores = _cores()
    blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    pools = {"BLAS/OpenMP": blas, "Numba": os.environ.get("NUMBA_NUM_THREADS")}
    heavy = []
    for pool, value in pools.items():
        try:
            threads = int(value) if value else cores
        except ValueError:
            continue
        if threads * strategy.local_size > cores:
            heavy.append(f"{pool} {threads}")
    if heavy:
        per = max(cores // strategy.local_size, 1)
        warnings.warn(
            f"{strategy.local_size} processes share this machine's {cores} cores and each "
            f"would use {', '.join(heavy)} threads: set "
            + ", ".join(f"{v}={per}" for v in THREAD_VARIABLES)
            + " for every process (MPICH: mpiexec -genv OMP_NUM_THREADS 1 ...; Open MPI: "
            "mpiexec -x OMP_NUM_THREADS=1 ...)", RuntimeWarning, stacklevel=3)
