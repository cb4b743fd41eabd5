// The cores' float32 multiply-add peak, for bench/kernels.py: the rate at which they retire
// independent FMAs with nothing to load or store. The sgemm ceiling is what OpenBLAS reaches
// on one large product; this bounds every kernel (a small GEMM in cache can beat the former,
// nothing beats this one), which is what a claim that a target cannot be met rests on.
#include "peak_fma.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "common.h"
#include "isa_dispatch.h"
#include "threading.h"

#ifdef FL_AVX512_DISPATCH
#include <immintrin.h>
#endif

namespace fl {

namespace {

#ifdef FL_AVX512_DISPATCH
// kChains independent chains of 16-lane FMAs: an FMA's latency (4 cycles) times the number
// of FMA pipes (2) is at most 8 in flight, so 12 keep every pipe busy every cycle. Returns a
// sum of the chains so that none of them is optimised away.
constexpr int kChains = 12;

FL_TARGET_AVX512 float fma_chains(i64 iterations) {
    __m512 acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(static_cast<float>(c));
    const __m512 scale = _mm512_set1_ps(0.999f), shift = _mm512_set1_ps(0.001f);
    for (i64 i = 0; i < iterations; ++i)
        for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], scale, shift);
    __m512 total = acc[0];
    for (int c = 1; c < kChains; ++c) total = _mm512_add_ps(total, acc[c]);
    return _mm512_reduce_add_ps(total);
}
#endif

}  // namespace

double peak_fma_gflops(i64 iterations, int repeats) {
#ifdef FL_AVX512_DISPATCH
    if (!cpu_has_avx512() || iterations < 1 || repeats < 1) return 0.0;
    const int threads = threads::num_threads();
    double best = 0.0;
    std::vector<float> sink(static_cast<size_t>(threads));
    for (int r = 0; r < repeats; ++r) {
        const auto start = std::chrono::steady_clock::now();
        parallel_for(threads, [&](i64 t) { sink[static_cast<size_t>(t)] = fma_chains(iterations); });
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        // Each iteration: kChains FMAs of 16 lanes, 2 FLOP each.
        const double flop = 2.0 * 16.0 * kChains * static_cast<double>(iterations) * threads;
        best = std::max(best, flop / s / 1e9);
    }
    volatile float keep = sink[0];
    (void)keep;
    return best;
#else
    (void)iterations;
    (void)repeats;
    return 0.0;
#endif
}

}  // namespace fl
