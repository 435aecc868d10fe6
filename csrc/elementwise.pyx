"""Element- and row-wise kernels: bias (+ activation), bias gradient, activations, softmax,
the three cross-entropies, and the OpenMP status of the build.

Determinism: no kernel here reduces across threads. Element-wise kernels are trivially
independent; row kernels give each row to one thread; the two reductions over a whole array
(``bias_grad`` and ``sigmoid_cross_entropy``) cut the array into FIXED blocks, reduce each
block in parallel, then add the block partials in block order on one thread. So a result
is bitwise the same with 1 or 2 (or 16) threads.

Sums are accumulated in double precision in registers (also for float32 data): this costs
nothing in a memory-bound loop and keeps float32 reductions close to NumPy's pairwise sums.
No float32 array is ever upcast.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, log, logf, log1p, log1pf, tanh, tanhf, fabs, fabsf
from libc.math cimport erfc, erfcf, sqrt, sqrtf, INFINITY
from libc.stdlib cimport malloc, free

from omp_guard cimport FASTCNN_OMP, fastcnn_max_threads, fastcnn_set_num_threads, threads_for

ABI_VERSION = 6

# Activation codes of bias_act (the fused epilogue of conv / dense GEMMs).
ACT_NONE = 0
ACT_RELU = 1
ACT_SIGMOID = 2
ACT_TANH = 3

cdef enum:
    _ACT_NONE = 0
    _ACT_RELU = 1
    _ACT_SIGMOID = 2
    _ACT_TANH = 3
    BLOCK_ROWS = 256       # rows per partial sum in bias_grad
    BLOCK_ELEMS = 8192     # elements per partial sum in sigmoid_cross_entropy


def openmp_info():
    """``(built_with_openmp, max_threads)``: max_threads is what a parallel kernel may use."""
    return bool(FASTCNN_OMP), fastcnn_max_threads()


def set_num_threads(int n):
    """Sets the OpenMP thread count of the calling thread (no effect without OpenMP)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    fastcnn_set_num_threads(n)


# --- scalar helpers: float32 data use the float libm functions (no double round trip) -----

cdef inline floating _exp(floating v) noexcept nogil:
    if floating is float:
        return expf(v)
    else:
        return exp(v)


cdef inline floating _tanh(floating v) noexcept nogil:
    if floating is float:
        return tanhf(v)
    else:
        return tanh(v)


cdef inline floating _log1p(floating v) noexcept nogil:
    if floating is float:
        return log1pf(v)
    else:
        return log1p(v)


cdef inline floating _fabs(floating v) noexcept nogil:
    if floating is float:
        return fabsf(v)
    else:
        return fabs(v)


cdef inline floating _sigmoid(floating v) noexcept nogil:
    # The reference's formula (1 if v >= 0 else e) / (1 + e) with e = exp(-|v|) <= 1:
    # never exponentiates a positive number, so no overflow for any v; ONE exp per element.
    # Speed traps avoided (they made this 4x slower than the exp itself):
    # * no branch on the sign: with random signs it is mispredicted half the time. The
    #   select is arithmetic instead: (v >= 0) + (v < 0) * e is exactly 1 or e, and NaN
    #   for a NaN v (both tests false, 0 * NaN = NaN) as in the reference;
    # * `<floating> 1`: a bare 1 makes Cython write the C literal 1.0, so a float32
    #   division would run as a (much slower) double division.
    cdef floating one = 1
    cdef floating e = _exp(-_fabs(v))
    cdef floating num = <floating> (v >= 0) + <floating> (v < 0) * e
    return num / (one + e)


cdef inline floating _relu(floating v) noexcept nogil:
    # `v <= 0` (not `v > 0`) so that a NaN propagates instead of being hidden as 0.
    return 0 if v <= 0 else v


cdef inline floating _relu_grad(floating d, floating v) noexcept nogil:
    # d is an argument, so it is loaded whatever v is: the select then compiles to a
    # vectorised compare-and-mask. Written as `dy[i] if y[i] > 0 else 0` inline, the load
    # of dy[i] sat inside the branch and the loop became a mispredicted jump per element
    # (20x slower on random signs). `v > 0` is False for NaN: the gradient there is 0.
    return d if v > 0 else 0


cdef inline floating _activate(floating v, int act) noexcept nogil:
    if act == _ACT_RELU:
        return _relu(v)
    if act == _ACT_SIGMOID:
        return _sigmoid(v)
    if act == _ACT_TANH:
        return _tanh(v)
    return v


cdef _check_same(Py_ssize_t a, Py_ssize_t b, str what):
    if a != b:
        raise ValueError(f"{what}: sizes differ ({a} vs {b})")


# --- bias epilogue and its gradient --------------------------------------------------------

def bias_act(floating[:, ::1] y not None, const floating[::1] b not None, int act):
    """In place: ``y[r, f] = act(y[r, f] + b[f])`` (act: one of the ACT_* codes)."""
    cdef Py_ssize_t M = y.shape[0], F = y.shape[1], r, f
    _check_same(b.shape[0], F, "bias_act: b vs the last axis of y")
    if act < _ACT_NONE or act > _ACT_TANH:
        raise ValueError(f"bias_act: unknown activation code {act}")
    if M * F == 0:
        return
    cdef int nt = threads_for(M * F)
    for r in prange(M, nogil=True, schedule="static", num_threads=nt):
        if act == _ACT_NONE:
            for f in range(F):
                y[r, f] = y[r, f] + b[f]
        elif act == _ACT_RELU:
            for f in range(F):
                y[r, f] = _relu(y[r, f] + b[f])
        else:
            for f in range(F):
                y[r, f] = _activate(y[r, f] + b[f], act)


def bias_grad(const floating[:, ::1] dy not None, floating[::1] db not None):
    """``db[f] = sum_r dy[r, f]``, deterministic for any thread count (fixed blocks)."""
    cdef Py_ssize_t M = dy.shape[0], F = dy.shape[1], nb, blk, r, f, r0, r1
    _check_same(db.shape[0], F, "bias_grad: db vs the last axis of dy")
    if F == 0:
        return
    nb = (M + BLOCK_ROWS - 1) // BLOCK_ROWS
    cdef double* part = <double*> malloc(max(nb, 1) * F * sizeof(double))
    cdef double acc
    cdef double* p
    if part == NULL:
        raise MemoryError()
    cdef int nt = threads_for(M * F)
    try:
        for blk in prange(nb, nogil=True, schedule="static", num_threads=nt):
            p = part + blk * F
            for f in range(F):
                p[f] = 0
            r0 = blk * BLOCK_ROWS
            r1 = min(r0 + BLOCK_ROWS, M)
            for r in range(r0, r1):
                for f in range(F):
                    p[f] = p[f] + dy[r, f]
        for f in range(F):
            acc = 0
            for blk in range(nb):
                acc = acc + part[blk * F + f]
            db[f] = <floating> acc
    finally:
        free(part)


# --- a residual block's sum -------------------------------------------------------------------

def add_act(const floating[::1] a not None, const floating[::1] b not None,
            floating[::1] out not None, str activation="linear"):
    """``out = act(a + b)`` in one parallel pass (an inference plan's residual Add with its
    ReLU): activation 'linear', 'relu' (v <= 0 -> 0, a NaN kept: relu_forward's bits) or
    'relu6' (then v > 6 -> 6). out may be a or b."""
    cdef Py_ssize_t n = a.shape[0], i
    cdef floating v
    _check_same(b.shape[0], n, "add_act: b vs a")
    _check_same(out.shape[0], n, "add_act: out vs a")
    if activation not in ("linear", "relu", "relu6"):
        raise ValueError(f"add_act: activation must be 'linear', 'relu' or 'relu6', "
                         f"got {activation!r}")
    cdef int act = 0 if activation == "linear" else 1 if activation == "relu" else 2
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        v = a[i] + b[i]
        if act >= 1:
            v = _relu(v)
            if act == 2 and v > 6:
                v = 6
        out[i] = v


# --- activations (flat views of C-contiguous arrays) ---------------------------------------

def relu_forward(const floating[::1] x not None, floating[::1] y not None):
    cdef Py_ssize_t n = x.shape[0], i
    _check_same(y.shape[0], n, "relu_forward: y vs x")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        y[i] = _relu(x[i])


def relu_backward(const floating[::1] dy not None, const floating[::1] y not None, floating[::1] dx not None):
    """``dx = dy * (y > 0)``: y is the forward output, so the derivative at x == 0 is 0."""
    cdef Py_ssize_t n = dy.shape[0], i
    _check_same(y.shape[0], n, "relu_backward: y vs dy")
    _check_same(dx.shape[0], n, "relu_backward: dx vs dy")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        dx[i] = _relu_grad(dy[i], y[i])


def sigmoid_forward(const floating[::1] x not None, floating[::1] y not None):
    cdef Py_ssize_t n = x.shape[0], i
    _check_same(y.shape[0], n, "sigmoid_forward: y vs x")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        y[i] = _sigmoid(x[i])


def sigmoid_backward(const floating[::1] dy not None, const floating[::1] y not None, floating[::1] dx not None):
    cdef Py_ssize_t n = dy.shape[0], i
    _check_same(y.shape[0], n, "sigmoid_backward: y vs dy")
    _check_same(dx.shape[0], n, "sigmoid_backward: dx vs dy")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        dx[i] = dy[i] * y[i] * (1 - y[i])


def tanh_forward(const floating[::1] x not None, floating[::1] y not None):
    cdef Py_ssize_t n = x.shape[0], i
    _check_same(y.shape[0], n, "tanh_forward: y vs x")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        y[i] = _tanh(x[i])


cdef extern from "activation_kernels.h" nogil:
    void fastcnn_tanh_backward_f32(const float* dy, const float* y, float* dx, Py_ssize_t n)
    void fastcnn_tanh_backward_f64(const double* dy, const double* y, double* dx,
                                   Py_ssize_t n)

cdef enum:
    ACT_BLOCK = 16384   # elements per parallel chunk of a vectorised activation pass


def tanh_backward(const floating[::1] dy not None, const floating[::1] y not None, floating[::1] dx not None):
    """``dx = dy * (1 - y*y)`` (csrc/activation_kernels.h): bitwise im2col's NumPy passes,
    vectorised, in fixed chunks over the threads."""
    cdef Py_ssize_t n = dy.shape[0], b, lo, nb
    _check_same(y.shape[0], n, "tanh_backward: y vs dy")
    _check_same(dx.shape[0], n, "tanh_backward: dx vs dy")
    if n == 0:
        return
    nb = (n + ACT_BLOCK - 1) // ACT_BLOCK
    cdef int nt = threads_for(n)
    for b in prange(nb, nogil=True, schedule="static", num_threads=nt):
        lo = b * ACT_BLOCK
        if floating is float:
            fastcnn_tanh_backward_f32(&dy[lo], &y[lo], &dx[lo], min(ACT_BLOCK, n - lo))
        else:
            fastcnn_tanh_backward_f64(&dy[lo], &y[lo], &dx[lo], min(ACT_BLOCK, n - lo))


# --- softmax over the last axis (rows of a 2-D view) ---------------------------------------

cdef inline floating _row_max(const floating* x, Py_ssize_t K) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating m = x[0]
    for k in range(1, K):
        if x[k] > m:
            m = x[k]
    return m


cdef inline double _softmax_row(const floating* x, floating* y, Py_ssize_t K, floating m) noexcept nogil:
    # y = exp(x - m) / sum with m = _row_max(x); returns log(sum) (log_softmax = (x - m) - log(sum)).
    # m and log(sum) stay apart: m + log(sum) would round log(sum) away at the scale of m
    # (at |x| = 1e30 the loss became 0).
    cdef Py_ssize_t k
    cdef double s = 0
    cdef floating inv
    for k in range(K):
        y[k] = _exp(x[k] - m)
        s = s + y[k]
    inv = <floating> (1.0 / s)
    for k in range(K):
        y[k] = y[k] * inv
    return log(s)


def softmax_forward(const floating[:, ::1] x not None, floating[:, ::1] y not None):
    cdef Py_ssize_t R = x.shape[0], K = x.shape[1], r
    _check_same(y.shape[0] * y.shape[1], R * K, "softmax_forward: y vs x")
    if R * K == 0:
        return
    cdef int nt = threads_for(R * K)
    for r in prange(R, nogil=True, schedule="static", num_threads=nt):
        _softmax_row(&x[r, 0], &y[r, 0], K, _row_max(&x[r, 0], K))


def softmax_backward(const floating[:, ::1] dy not None, const floating[:, ::1] y not None,
                     floating[:, ::1] dx not None):
    """``dx = y * (dy - sum(dy * y))`` per row (y is the forward output)."""
    cdef Py_ssize_t R = dy.shape[0], K = dy.shape[1], r, k
    cdef double d
    _check_same(y.shape[0] * y.shape[1], R * K, "softmax_backward: y vs dy")
    _check_same(dx.shape[0] * dx.shape[1], R * K, "softmax_backward: dx vs dy")
    if R * K == 0:
        return
    cdef int nt = threads_for(R * K)
    for r in prange(R, nogil=True, schedule="static", num_threads=nt):
        d = 0
        for k in range(K):
            d = d + dy[r, k] * y[r, k]
        for k in range(K):
            dx[r, k] = y[r, k] * (dy[r, k] - <floating> d)


# --- fused losses: one pass gives the mean loss and d(loss)/d(logits) ----------------------

def softmax_cross_entropy(const floating[:, ::1] logits not None, const floating[:, ::1] targets not None,
                          floating[:, ::1] dlogits not None):
    """Returns the batch-mean loss; fills ``dlogits = (softmax * sum(t) - t) / N``."""
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1], r, k
    cdef double logsum, tsum, row, total = 0
    cdef floating invn, tf, m
    _check_same(targets.shape[0] * targets.shape[1], N * K, "softmax_cross_entropy: targets vs logits")
    _check_same(dlogits.shape[0] * dlogits.shape[1], N * K, "softmax_cross_entropy: dlogits vs logits")
    if N == 0 or K == 0:
        raise ValueError(f"softmax_cross_entropy: logits must be non-empty, got shape {(N, K)}")
    invn = <floating> (1.0 / N)
    cdef double* rowloss = <double*> malloc(N * sizeof(double))
    if rowloss == NULL:
        raise MemoryError()
    cdef int nt = threads_for(N * K)
    try:
        for r in prange(N, nogil=True, schedule="static", num_threads=nt):
            m = _row_max(&logits[r, 0], K)
            logsum = _softmax_row(&logits[r, 0], &dlogits[r, 0], K, m)
            tsum = 0
            row = 0
            for k in range(K):
                tsum = tsum + targets[r, k]
                row = row + targets[r, k] * (logsum - <double> (logits[r, k] - m))
            rowloss[r] = row
            tf = <floating> tsum
            for k in range(K):
                dlogits[r, k] = (dlogits[r, k] * tf - targets[r, k]) * invn
        for r in range(N):
            total = total + rowloss[r]
    finally:
        free(rowloss)
    return total / N


def sparse_softmax_cross_entropy(const floating[:, ::1] logits not None, const Py_ssize_t[::1] labels not None,
                                 floating[:, ::1] dlogits not None):
    """Same as softmax_cross_entropy with one-hot targets given as class indices."""
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1], r, k, lab
    cdef double logsum, total = 0
    cdef floating invn, m
    _check_same(labels.shape[0], N, "sparse_softmax_cross_entropy: labels vs rows of logits")
    _check_same(dlogits.shape[0] * dlogits.shape[1], N * K, "sparse_softmax_cross_entropy: dlogits vs logits")
    if N == 0 or K == 0:
        raise ValueError(f"sparse_softmax_cross_entropy: logits must be non-empty, got shape {(N, K)}")
    for r in range(N):  # an out-of-range label would read outside the row
        if labels[r] < 0 or labels[r] >= K:
            raise ValueError(f"labels must be class indices in [0, {K}), "
                             f"got {labels[r]} at position {r}")
    invn = <floating> (1.0 / N)
    cdef double* rowloss = <double*> malloc(N * sizeof(double))
    if rowloss == NULL:
        raise MemoryError()
    cdef int nt = threads_for(N * K)
    try:
        for r in prange(N, nogil=True, schedule="static", num_threads=nt):
            m = _row_max(&logits[r, 0], K)
            logsum = _softmax_row(&logits[r, 0], &dlogits[r, 0], K, m)
            lab = labels[r]
            rowloss[r] = logsum - <double> (logits[r, lab] - m)
            dlogits[r, lab] = dlogits[r, lab] - 1
            for k in range(K):
                dlogits[r, k] = dlogits[r, k] * invn
        for r in range(N):
            total = total + rowloss[r]
    finally:
        free(rowloss)
    return total / N


def sigmoid_cross_entropy(const floating[::1] logits not None, const floating[::1] targets not None,
                          floating[::1] dlogits not None):
    """Mean over all elements of ``max(x, 0) - x*t + log1p(exp(-|x|))`` (stable for any x);
    fills ``dlogits = (sigmoid(x) - t) / size``."""
    cdef Py_ssize_t n = logits.shape[0], nb, blk, i, i0, i1
    cdef double acc, total = 0
    cdef floating x, t, inv
    _check_same(targets.shape[0], n, "sigmoid_cross_entropy: targets vs logits")
    _check_same(dlogits.shape[0], n, "sigmoid_cross_entropy: dlogits vs logits")
    if n == 0:
        raise ValueError("sigmoid_cross_entropy: logits must be non-empty")
    inv = <floating> (1.0 / n)
    nb = (n + BLOCK_ELEMS - 1) // BLOCK_ELEMS
    cdef double* part = <double*> malloc(nb * sizeof(double))
    if part == NULL:
        raise MemoryError()
    cdef int nt = threads_for(n)
    try:
        for blk in prange(nb, nogil=True, schedule="static", num_threads=nt):
            acc = 0
            i0 = blk * BLOCK_ELEMS
            i1 = min(i0 + BLOCK_ELEMS, n)
            for i in range(i0, i1):
                x = logits[i]
                t = targets[i]
                acc = acc + ((x if x > 0 else 0) - x * t + _log1p(_exp(-_fabs(x))))
                dlogits[i] = (_sigmoid(x) - t) * inv
            part[blk] = acc
        for blk in range(nb):
            total = total + part[blk]
    finally:
        free(part)
    return total / n


# --- the ReLU family and the hard / erf activations (fastcnn/backends/_activations.py has
# --- the formulas; the exp/tanh-based ones run there, on NumPy's SIMD math) ---------------

cdef inline floating _relu_general(floating v, floating s, floating lw, floating hg,
                                   floating th, bint has_slope) noexcept nogil:
    # Keras's relu(x, negative_slope, max_value, threshold): x above the threshold (else 0),
    # clipped to [lw, hg] (+-inf: no bound), minus s * max(th - x, 0). Every test is one a
    # NaN fails, so NaN passes through; has_slope False skips the product (0 * inf = NaN).
    cdef floating zero = 0
    cdef floating a = zero if v <= th else v
    cdef floating n = th - v
    a = lw if a < lw else a
    a = hg if a > hg else a
    if has_slope:
        a = a - s * (n if n > zero else zero)
    return a


cdef inline floating _relu_general_grad(floating d, floating v, floating s, floating lw,
                                        floating hg, floating th, bint has_slope,
                                        bint unbounded) noexcept nogil:
    # dy times the derivative: 1 where the kept part is x itself, s at and below the
    # threshold, else 0. The derivative is SELECTED (among values, no arithmetic inside a
    # branch) and multiplied after: GCC does not speculate a product that sits in one arm
    # of a branch (it might trap), so "s * d if below else ..." stayed a branch per
    # element, mispredicted half the time on random signs (35 ms instead of 1 on 2.8M).
    # Non-short-circuit '&' / '|': each 'and' / 'or' would be a branch of its own.
    # (An infinite d times a 0 derivative gives NaN here, as in the reference.)
    cdef floating zero = 0, one = 1
    cdef bint keep = (v > th) & (v > lw) & (unbounded | (v < hg))
    cdef bint below = has_slope & (v <= th)
    cdef floating g = one if keep else zero
    g = s if below else g
    return d * g


def relu_general_forward(const floating[::1] x not None, floating[::1] y not None,
                         double slope, double low, double high, double threshold):
    """``y = relu(x, negative_slope=slope, ...)`` with the clip interval ``[low, high]``
    (``fastcnn.backends._activations.relu_general_params`` computes it)."""
    cdef Py_ssize_t n = x.shape[0], i
    _check_same(y.shape[0], n, "relu_general_forward: y vs x")
    cdef floating s = <floating> slope, lw = <floating> low, hg = <floating> high
    cdef floating th = <floating> threshold
    cdef bint has_slope = slope != 0
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        y[i] = _relu_general(x[i], s, lw, hg, th, has_slope)


def relu_general_backward(const floating[::1] dy not None, const floating[::1] x not None,
                          floating[::1] dx not None, double slope, double low, double high,
                          double threshold):
    """``dx`` of relu_general_forward; ``x`` is the forward INPUT."""
    cdef Py_ssize_t n = dy.shape[0], i
    _check_same(x.shape[0], n, "relu_general_backward: x vs dy")
    _check_same(dx.shape[0], n, "relu_general_backward: dx vs dy")
    cdef floating s = <floating> slope, lw = <floating> low, hg = <floating> high
    cdef floating th = <floating> threshold
    cdef bint has_slope = slope != 0
    cdef bint unbounded = high == INFINITY
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        dx[i] = _relu_general_grad(dy[i], x[i], s, lw, hg, th, has_slope, unbounded)


cdef inline floating _hard_sigmoid(floating v) noexcept nogil:
    # Keras 3's relu6(x + 3) / 6 (a NaN fails both tests and passes through).
    # Divided first, then clipped to [0, 1]: the same numbers as clipping to [0, 6] first
    # (correctly rounded division is monotone and 6 / 6 is exactly 1), but this way the two
    # selects come last, in relu's form, which GCC turns into vector min/max; clipping
    # before the division left a branch per element (20 ms instead of 1 on 2.8M values).
    cdef floating zero = 0, one = 1, three = 3, six = 6
    cdef floating a = (v + three) / six
    a = zero if a <= zero else a
    return one if a >= one else a


def hard_sigmoid_forward(const floating[::1] x not None, floating[::1] y not None):
    cdef Py_ssize_t n = x.shape[0], i
    _check_same(y.shape[0], n, "hard_sigmoid_forward: y vs x")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        y[i] = _hard_sigmoid(x[i])


cdef inline floating _hard_sigmoid_grad(floating d, floating v) noexcept nogil:
    # v is the forward OUTPUT: 0 < y < 1 exactly where -3 < x < 3.
    # The derivative selected, then multiplied (see _relu_general_grad).
    cdef floating zero = 0, one = 1, sixth = 1.0 / 6.0
    cdef floating g = sixth if ((v > zero) & (v < one)) else zero
    return d * g


def hard_sigmoid_backward(const floating[::1] dy not None, const floating[::1] y not None,
                          floating[::1] dx not None):
    cdef Py_ssize_t n = dy.shape[0], i
    _check_same(y.shape[0], n, "hard_sigmoid_backward: y vs dy")
    _check_same(dx.shape[0], n, "hard_sigmoid_backward: dx vs dy")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        dx[i] = _hard_sigmoid_grad(dy[i], y[i])


def hard_silu_forward(const floating[::1] x not None, floating[::1] y not None):
    """``y = x * hard_sigmoid(x)`` in two passes: GCC kept a branch per element in every
    one-pass form tried (the product after the clip's selects was duplicated into them:
    10-17 ms instead of 2 on 2.8M values)."""
    cdef Py_ssize_t n = x.shape[0], i
    _check_same(y.shape[0], n, "hard_silu_forward: y vs x")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        y[i] = _hard_sigmoid(x[i])
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        y[i] = x[i] * y[i]


cdef inline floating _hard_silu_grad(floating d, floating v, floating h) noexcept nogil:
    # d (h + v h') with h = hard_sigmoid(v) and h' = 1/6 where 0 < h < 1 (-3 < v < 3):
    # 0 below -3, 1 above 3, (2v + 3) / 6 between. h' is selected among constants and the
    # arithmetic comes after, unconditionally (no branch per element).
    cdef floating zero = 0, one = 1, sixth = 1.0 / 6.0
    cdef floating slope = sixth if ((h > zero) & (h < one)) else zero
    return d * (h + v * slope)


def hard_silu_backward(const floating[::1] dy not None, const floating[::1] x not None,
                       floating[::1] dx not None):
    cdef Py_ssize_t n = dy.shape[0], i
    _check_same(x.shape[0], n, "hard_silu_backward: x vs dy")
    _check_same(dx.shape[0], n, "hard_silu_backward: dx vs dy")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        dx[i] = _hard_sigmoid(x[i])
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        dx[i] = _hard_silu_grad(dy[i], x[i], dx[i])


cdef inline floating _erfc(floating v) noexcept nogil:
    if floating is float:
        return erfcf(v)
    else:
        return erfc(v)


cdef inline floating _gelu(floating v) noexcept nogil:
    # x * Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2 (TensorFlow's form).
    cdef floating half = 0.5, c = 0.7071067811865476
    return half * v * _erfc(-v * c)


cdef inline floating _gelu_grad(floating d, floating v) noexcept nogil:
    # Phi(x) + x * phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    cdef floating half = 0.5, c = 0.7071067811865476, k = 0.3989422804014327
    return d * (half * _erfc(-v * c) + v * (k * _exp(-half * v * v)))


def gelu_forward(const floating[::1] x not None, floating[::1] y not None):
    cdef Py_ssize_t n = x.shape[0], i
    _check_same(y.shape[0], n, "gelu_forward: y vs x")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        y[i] = _gelu(x[i])


def gelu_backward(const floating[::1] dy not None, const floating[::1] x not None,
                  floating[::1] dx not None):
    cdef Py_ssize_t n = dy.shape[0], i
    _check_same(x.shape[0], n, "gelu_backward: x vs dy")
    _check_same(dx.shape[0], n, "gelu_backward: dx vs dy")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        dx[i] = _gelu_grad(dy[i], x[i])


# --- optimizer updates -----------------------------------------------------------------------

cdef extern from "optimizer_kernels.h" nogil:
    void fastcnn_adam_f32(float* w, const float* g, float* m, float* v, Py_ssize_t n,
                          float c1, float c2, float eps, float alpha)
    void fastcnn_adam_f64(double* w, const double* g, double* m, double* v, Py_ssize_t n,
                          double c1, double c2, double eps, double alpha)
    void fastcnn_rmsprop_f32(float* w, const float* g, float* v, Py_ssize_t n,
                             float rho, float c, float eps, float lr)
    void fastcnn_rmsprop_f64(double* w, const double* g, double* v, Py_ssize_t n,
                             double rho, double c, double eps, double lr)

cdef enum:
    UPDATE_BLOCK = 16384   # elements per parallel chunk of an optimizer update


def adam_update(floating[::1] w not None, const floating[::1] g not None,
                floating[::1] m not None, floating[::1] v not None,
                double one_minus_beta_1, double one_minus_beta_2, double epsilon,
                floating alpha):
    """Keras's Adam step in one vectorised pass over ``w, g, m, v``
    (csrc/optimizer_kernels.h; fastcnn.optimizers.Adam._update's NumPy lines are the
    definition, ten passes). Bitwise NumPy's result: the scalars are rounded to the data
    type here as NumPy rounds a Python float against a float32 array."""
    cdef Py_ssize_t n = w.shape[0], b, lo, nb
    _check_same(g.shape[0], n, "adam_update: g vs w")
    _check_same(m.shape[0], n, "adam_update: m vs w")
    _check_same(v.shape[0], n, "adam_update: v vs w")
    if n == 0:
        return
    cdef floating c1 = <floating>one_minus_beta_1, c2 = <floating>one_minus_beta_2
    cdef floating eps = <floating>epsilon
    nb = (n + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    cdef int nt = threads_for(n)
    for b in prange(nb, nogil=True, schedule="static", num_threads=nt):
        lo = b * UPDATE_BLOCK
        if floating is float:
            fastcnn_adam_f32(&w[lo], &g[lo], &m[lo], &v[lo], min(UPDATE_BLOCK, n - lo),
                             c1, c2, eps, alpha)
        else:
            fastcnn_adam_f64(&w[lo], &g[lo], &m[lo], &v[lo], min(UPDATE_BLOCK, n - lo),
                             c1, c2, eps, alpha)


def rmsprop_update(floating[::1] w not None, const floating[::1] g not None,
                   floating[::1] v not None, double rho, double one_minus_rho,
                   double epsilon, double learning_rate):
    """Keras's RMSprop step (no momentum, not centered) in one vectorised pass
    (csrc/optimizer_kernels.h; fastcnn.optimizers.RMSprop._update's NumPy lines define it):
    bitwise NumPy's result, every Python-float scalar rounded to the data type first."""
    cdef Py_ssize_t n = w.shape[0], b, lo, nb
    _check_same(g.shape[0], n, "rmsprop_update: g vs w")
    _check_same(v.shape[0], n, "rmsprop_update: v vs w")
    if n == 0:
        return
    cdef floating r = <floating>rho, c = <floating>one_minus_rho
    cdef floating eps = <floating>epsilon, lr = <floating>learning_rate
    nb = (n + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    cdef int nt = threads_for(n)
    for b in prange(nb, nogil=True, schedule="static", num_threads=nt):
        lo = b * UPDATE_BLOCK
        if floating is float:
            fastcnn_rmsprop_f32(&w[lo], &g[lo], &v[lo], min(UPDATE_BLOCK, n - lo),
                                r, c, eps, lr)
        else:
            fastcnn_rmsprop_f64(&w[lo], &g[lo], &v[lo], min(UPDATE_BLOCK, n - lo),
                                r, c, eps, lr)
