# OpenMP guard shared by every csrc/*.pyx module (cimported as `from omp_guard cimport ...`).
#
# Why a verbatim C block and not `cimport openmp`: with `cimport openmp`, a build without
# -fopenmp (FASTCNN_OPENMP=0, or a compiler without OpenMP) compiles but then fails at import
# with "undefined symbol: omp_get_max_threads". Here every omp_* call sits under #ifdef _OPENMP,
# so the same source builds both ways and `prange` simply runs serially without OpenMP.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTCNN_OMP 1
    static inline int fastcnn_max_threads(void) { return omp_get_max_threads(); }
    static inline void fastcnn_set_num_threads(int n) { omp_set_num_threads(n); }
    #else
    #define FASTCNN_OMP 0
    static inline int fastcnn_max_threads(void) { return 1; }
    static inline void fastcnn_set_num_threads(int n) { (void)n; }
    #endif
    """
    int FASTCNN_OMP
    int fastcnn_max_threads() noexcept nogil
    void fastcnn_set_num_threads(int n) noexcept nogil


# Below this many scalar elements of work a kernel runs on one thread: waking the OpenMP team
# costs a few microseconds, more than the work itself (batch-1 inference, small dense layers).
# Results never depend on the thread count (no kernel reduces across threads), so this only
# changes speed.
cdef enum:
    PARALLEL_MIN_WORK = 32768


cdef inline int threads_for(Py_ssize_t work) noexcept nogil:
    if work < PARALLEL_MIN_WORK:
        return 1
    return fastcnn_max_threads()
