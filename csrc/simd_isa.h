/* What every kernel file needs, compiled once per instruction set: simd.h includes this
 * file three times, each time under a target pragma and with
 *
 *   FC_ISA            the suffix of every function name (generic, avx2, avx512),
 *   FC_VLEN           floats per vector register (4, 8 or 16),
 *
 * and the conv kernels' block shapes (conv_kernels.h). It defines the vector types and
 * their helpers, includes the kernels, then undefines all of these for the next
 * compilation. No include guard, on purpose.
 */

#define FC_CAT_(a, b) a##_##b
#define FC_CAT(a, b) FC_CAT_(a, b)
#define FC_FN(name) FC_CAT(fc_##name, FC_ISA)

/* --- vectors of FC_VLEN floats: exactly one register ------------------------------------
 * (A wider GNU vector than the target's registers is legal C, but GCC then keeps it in
 * memory between operations: measured 10x slower.) memcpy is how GNU C spells an
 * unaligned vector load or store; it compiles to one instruction (vmovups). */

typedef float FC_FN(vec) __attribute__((vector_size(4 * FC_VLEN)));
typedef int FC_FN(ivec) __attribute__((vector_size(4 * FC_VLEN)));
#define FC_VEC FC_FN(vec)
#define FC_IVEC FC_FN(ivec)

FC_INLINE FC_VEC FC_FN(load)(const float *p)
{
    FC_VEC v;
    memcpy(&v, p, sizeof v);
    return v;
}

FC_INLINE void FC_FN(store)(float *p, FC_VEC v) { memcpy(p, &v, sizeof v); }

/* The first k < FC_VLEN lanes, the others zero: the ragged end of a row of channels. */
FC_INLINE FC_VEC FC_FN(load_part)(const float *p, ptrdiff_t k)
{
    FC_VEC v = {0};
    memcpy(&v, p, (size_t)k * sizeof(float));
    return v;
}

FC_INLINE void FC_FN(store_part)(float *p, FC_VEC v, ptrdiff_t k)
{
    memcpy(p, &v, (size_t)k * sizeof(float));
}

FC_INLINE void FC_FN(store_int)(int *p, FC_IVEC v) { memcpy(p, &v, sizeof v); }

/* Lane-wise mask ? a : b (mask lanes all ones or all zeros, as comparisons give). */
FC_INLINE FC_VEC FC_FN(select)(FC_IVEC mask, FC_VEC a, FC_VEC b)
{
    return (FC_VEC)(((FC_IVEC)a & mask) | ((FC_IVEC)b & ~mask));
}

/* Where v replaces best in a max-pool scan: strictly greater (the FIRST maximum keeps
 * ties), or the first NaN (NaN propagates, as np.argmax does). */
FC_INLINE FC_IVEC FC_FN(wins)(FC_VEC v, FC_VEC best)
{
    return (v > best) | ((v != v) & (best == best));
}

#include "conv_kernels.h"
#include "pool_kernels.h"

#undef FC_VEC
#undef FC_IVEC
#undef FC_CAT_
#undef FC_CAT
#undef FC_FN
/* The per-ISA parameters simd.h defined before including this file. */
#undef FC_ISA
#undef FC_VLEN
#undef FC_MR
#undef FC_NV_MAX
#undef FC_BLOCKS_OF_ISA
#undef FC_POOL_NV_MAX
#undef FC_POOL_BLOCKS_OF_ISA
