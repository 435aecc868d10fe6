# simd.h's structs and kernels, declared once for every module that calls them (simd.pyx,
# plan.pyx).
cdef extern from "simd.h" nogil:
    ctypedef struct fc_gather:
        const float *src
        Py_ssize_t n_img, hs, ws, cs
        const float *w
        const float *bias
        const float *zeros
        Py_ssize_t run
        Py_ssize_t nth, ntw, co, co_pad
        float *out
        Py_ssize_t ho, wo
        Py_ssize_t grid_u, grid_v
        Py_ssize_t by0, bsy, bx0, bsx
        Py_ssize_t oy0, osy, ox0, osx
        int *arg
        Py_ssize_t conv_wo
        int act

    ctypedef struct fc_dw:
        const float *x
        Py_ssize_t n_img, h, w, c
        const float *dy
        Py_ssize_t ho, wo, f, f_pad
        Py_ssize_t kh, kw, sh, sw, pt, pl
        float *dw
        Py_ssize_t run
        Py_ssize_t block_rows
        Py_ssize_t tile_rows

    ctypedef struct fc_pool:
        const float *x
        Py_ssize_t n_img, h, w, c
        float *y
        int *arg
        Py_ssize_t ho, wo, ph, pw, sh, sw, pt, pl
        const float *dy
        float *dx

    int FC_DW_TILE_PIXELS
    int fc_isa_supported(int isa)
    void fc_set_isa(int isa)
    int fc_get_isa()
    Py_ssize_t fc_dw_block_rows()
    Py_ssize_t fc_dw_scratch_floats(const fc_dw *g)
    void fc_gather_range(const fc_gather *g, Py_ssize_t q_lo, Py_ssize_t q_hi)
    void fc_gather_pool_range(const fc_gather *g, Py_ssize_t q_lo, Py_ssize_t q_hi)
    void fc_dw_range(const fc_dw *g, Py_ssize_t unit_lo, Py_ssize_t unit_hi, float *scratch)
    void fc_maxpool_rows(const fc_pool *g, Py_ssize_t r_lo, Py_ssize_t r_hi)
    void fc_maxpool_backward_rows(const fc_pool *g, Py_ssize_t r_lo, Py_ssize_t r_hi)
    void fc_avgpool_rows(const fc_pool *g, Py_ssize_t r_lo, Py_ssize_t r_hi)
    void fc_avgpool_backward_rows(const fc_pool *g, Py_ssize_t r_lo, Py_ssize_t r_hi)
