"""The C runner of fastcnn's inference plans (see fastcnn/inference_plan.py and plan.h).

:class:`CPlan` turns a bound plan's steps into an array of C step descriptors (plan.h's
``fp_step``) and runs them all in ONE call (``run``), without the GIL and without coming
back to Python between layers. The arena, the packed weights and the scratch buffers are
NumPy arrays owned by the Python plan; CPlan keeps references to them, so their pointers
stay valid for its lifetime.

``same_bytes(a, b)``: whether two arrays hold the same bytes (a memcmp): the plan's check
that the weights it copied at compile time are unchanged.
"""
import numpy as np

cimport numpy as cnp
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy

cnp.import_array()

# Bumped whenever a signature here changes: fastcnn.inference_plan refuses a stale build.
ABI_VERSION = 6

from simd_h cimport fc_gather, fc_pool, fc_get_isa, fc_set_isa, fc_isa_supported

cdef extern from "plan.h" nogil:
    ctypedef struct fp_step:
        int op, act
        int wino_m
        Py_ssize_t in0, in1, out
        Py_ssize_t rows, cols
        fc_gather g
        fc_pool p
        const float *w
        const float *b
        Py_ssize_t k, f, f_pad
        Py_ssize_t hw
        Py_ssize_t work
        Py_ssize_t units

    int FP_CONV, FP_CONV_POOL, FP_DENSE, FP_MAXPOOL, FP_ACT, FP_ADD, FP_AFFINE, FP_GAP, FP_AVGPOOL, FP_WINO_POOL
    int FP_WINO_CONV
    int FP_RELU, FP_RELU6
    int fp_run(const fp_step *steps, Py_ssize_t nsteps, float *arena,
               const float *const *inputs, int *iscratch, const float *zeros)

fc_get_isa()   # choose the instruction set now, with the GIL held (as simd.pyx does)

#: The instruction sets of this module's kernels (its own copy of simd.h's choice).
ISAS = ("generic", "avx2", "avx512")


def isa():
    """The instruction set this module's kernels run now."""
    return ISAS[fc_get_isa()]


def set_isa(name):
    """Runs this module's kernels on ``name`` (for tests): one this CPU supports. Not for
    use while a plan runs."""
    if name not in ISAS or not fc_isa_supported(ISAS.index(name)):
        raise ValueError(f"isa {name!r} is not one this CPU supports")
    fc_set_isa(ISAS.index(name))

OPS = {"conv": FP_CONV, "conv_pool": FP_CONV_POOL, "dense": FP_DENSE, "maxpool": FP_MAXPOOL,
       "act": FP_ACT, "add": FP_ADD, "affine": FP_AFFINE, "gap": FP_GAP, "avgpool": FP_AVGPOOL,
       "wino_pool": FP_WINO_POOL, "wino_conv": FP_WINO_CONV}


cdef const float *_fptr(a) except? NULL:
    if a is None:
        return NULL
    cdef cnp.ndarray arr = a
    if arr.dtype != np.float32 or not arr.flags.c_contiguous:
        raise ValueError("plan: weights must be C-contiguous float32")
    return <const float *>cnp.PyArray_DATA(arr)


cdef class CPlan:
    """The steps of a bound plan as C descriptors; ``run(xs)`` runs them all."""

    cdef fp_step *steps
    cdef Py_ssize_t nsteps
    cdef object keep          # the arrays the descriptors point into
    cdef cnp.ndarray arena, iscratch
    cdef float *zeros
    cdef list outputs         # (offset, shape) per output
    cdef Py_ssize_t n_inputs
    cdef list input_sizes

    def __cinit__(self):
        self.steps = NULL
        self.zeros = NULL

    def __init__(self, list descs, arena, iscratch, Py_ssize_t zeros, list outputs,
                 list input_sizes):
        """``descs``: one dict per step (inference_plan builds them); ``outputs``:
        ``(offset, shape)`` of each output; ``zeros``: the longest run of zeros a conv
        tap outside its image reads."""
        self.arena = arena
        self.iscratch = iscratch
        if arena.dtype != np.float32 or iscratch.dtype != np.int32:
            raise ValueError("plan: the arena must be float32 and the scratch int32")
        self.keep = descs
        self.outputs = outputs
        self.n_inputs = len(input_sizes)
        self.input_sizes = input_sizes
        self.zeros = <float *>calloc(max(zeros, 16), sizeof(float))
        self.steps = <fp_step *>calloc(max(len(descs), 1), sizeof(fp_step))
        if self.zeros == NULL or self.steps == NULL:
            raise MemoryError()
        self.nsteps = len(descs)
        cdef Py_ssize_t i
        cdef fp_step *st
        for i, d in enumerate(descs):
            st = &self.steps[i]
            st.op = OPS[d["op"]]
            st.act = d.get("act", 0)
            st.wino_m = d.get("m", 2)
            st.in0, st.in1, st.out = d["in0"], d.get("in1", 0), d["out"]
            st.rows, st.cols = d["rows"], d["cols"]
            st.work, st.units = d.get("work", 0), d.get("units", 0)
            st.w = _fptr(d.get("w"))
            st.b = _fptr(d.get("b"))
            st.k, st.f, st.f_pad = d.get("k", 0), d.get("f", 0), d.get("f_pad", 0)
            st.hw = d.get("hw", 0)
            if "g" in d:
                g = d["g"]
                st.g.src = NULL
                st.g.out = NULL
                st.g.zeros = NULL
                st.g.arg = NULL
                st.g.w = st.w
                st.g.bias = st.b
                st.g.n_img, st.g.hs, st.g.ws, st.g.cs = g["n_img"], g["hs"], g["ws"], g["cs"]
                st.g.run = g["run"]
                st.g.nth, st.g.ntw, st.g.co, st.g.co_pad = g["nth"], g["ntw"], g["co"], g["co_pad"]
                st.g.ho, st.g.wo = g["ho"], g["wo"]
                st.g.grid_u, st.g.grid_v = g["grid_u"], g["grid_v"]
                st.g.by0, st.g.bsy, st.g.bx0, st.g.bsx = g["by0"], g["bsy"], g["bx0"], g["bsx"]
                st.g.oy0, st.g.osy, st.g.ox0, st.g.osx = 0, 1, 0, 1
                st.g.conv_wo = g.get("conv_wo", 0)
                st.g.act = 0
                if st.op == FP_CONV and (st.act == FP_RELU or st.act == FP_RELU6):
                    # in the gather's epilogue, before its store (simd.h's FC_ACT_*):
                    # the same bits as fp_activate, without a pass of its own
                    st.g.act = 1 if st.act == FP_RELU else 2
                    st.act = 0
            if "p" in d:
                p = d["p"]
                st.p.x = NULL
                st.p.y = NULL
                st.p.arg = NULL
                st.p.dy = NULL
                st.p.dx = NULL
                st.p.n_img, st.p.h, st.p.w, st.p.c = p["n_img"], p["h"], p["w"], p["c"]
                st.p.ho, st.p.wo, st.p.ph, st.p.pw = p["ho"], p["wo"], p["ph"], p["pw"]
                st.p.sh, st.p.sw, st.p.pt, st.p.pl = p["sh"], p["sw"], p["pt"], p["pl"]

    def __dealloc__(self):
        free(self.steps)
        free(self.zeros)

    def run(self, list xs):
        """The outputs (fresh float32 arrays, copied out of the arena) on ``xs`` (C-contiguous
        float32 arrays of the planned shapes: the caller checks)."""
        cdef const float *ins[16]
        cdef Py_ssize_t i
        cdef cnp.ndarray a
        if len(xs) != self.n_inputs or self.n_inputs > 16:
            raise ValueError(f"plan: expected {self.n_inputs} inputs, got {len(xs)}")
        for i in range(self.n_inputs):
            a = xs[i]
            if a.dtype != np.float32 or not a.flags.c_contiguous or \
                    a.size != self.input_sizes[i]:
                raise ValueError("plan: inputs must be C-contiguous float32 of the planned shape")
            ins[i] = <const float *>cnp.PyArray_DATA(a)
        cdef float *arena = <float *>cnp.PyArray_DATA(self.arena)
        cdef int *iscratch = <int *>cnp.PyArray_DATA(self.iscratch)
        cdef int status
        with nogil:
            status = fp_run(self.steps, self.nsteps, arena, ins, iscratch, self.zeros)
        if status != 0:
            raise MemoryError("plan: a scratch allocation failed")
        outs = []
        cdef Py_ssize_t off, size
        cdef cnp.ndarray y
        for off, shape in self.outputs:
            y = np.empty(shape, dtype=np.float32)
            size = y.size
            if off >= 0:
                memcpy(cnp.PyArray_DATA(y), arena + off, size * sizeof(float))
            else:
                memcpy(cnp.PyArray_DATA(y), ins[-1 - off], size * sizeof(float))
            outs.append(y)
        return outs


def same_bytes(a, b):
    """Whether ``a`` and ``b`` (C-contiguous arrays) hold the same bytes."""
    cdef cnp.ndarray x = a, y = b
    if x.nbytes != y.nbytes or x.dtype != y.dtype or not x.flags.c_contiguous or \
            not y.flags.c_contiguous:
        return False
    return memcmp(cnp.PyArray_DATA(x), cnp.PyArray_DATA(y), x.nbytes) == 0
