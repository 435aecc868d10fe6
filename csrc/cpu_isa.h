/* Which SIMD level this CPU runs: the one check behind every extension's run-time dispatch
 * (simd.h, depthwise.h). Levels: 0 generic C, 1 AVX2 + FMA, 2 AVX-512 F/VL/DQ/BW (and 1). */
#ifndef FASTCNN_CPU_ISA_H
#define FASTCNN_CPU_ISA_H

static int fastcnn_cpu_supports(int level)
{
    if (level == 0)
        return 1;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (level == 1)
        return avx2;
    if (level == 2)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
#endif
    return 0;
}

#endif
