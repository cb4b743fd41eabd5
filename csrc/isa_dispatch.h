// Run-time choice of an AVX-512 build of a hot loop.
//
// The library is compiled for baseline x86-64 (SSE2) so that it loads on any x86-64 CPU.
// A few hot loops gain from wider vectors or need AVX-512DQ's 64-bit lane
// multiplies; for those, the loop body is an always-inline template instantiated twice,
// once in a function carrying FL_TARGET_AVX512, and the caller picks one with
// cpu_has_avx512(). Only loops whose result does not depend on the vector width (selection,
// integer math, sums in a fixed lane order) are dispatched this way: the partition of work
// between threads never depends on the build, so either build is bitwise reproducible across
// thread counts. Floating-point arithmetic may still differ in the last bit between the two
// builds where AVX-512 contracts a multiply and an add into an FMA.
#pragma once
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && defined(__x86_64__)
#define FL_AVX512_DISPATCH 1
#define FL_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw")))
#endif

#if defined(__GNUC__)
#define FL_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define FL_ALWAYS_INLINE inline
#endif

namespace fl {

// Whether the AVX-512 builds run. FASTLAYERS_DISABLE_AVX512 (set, non-empty, not "0")
// forces the baseline builds, so that tests on an AVX-512 machine cover them too. Read once.
inline bool cpu_has_avx512() {
#ifdef FL_AVX512_DISPATCH
    static const bool yes = [] {
        const char* off = std::getenv("FASTLAYERS_DISABLE_AVX512");
        if (off && *off && std::strcmp(off, "0") != 0) return false;
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
    }();
    return yes;
#else
    return false;
#endif
}

}  // namespace fl
