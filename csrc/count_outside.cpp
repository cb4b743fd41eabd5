// count_outside: per unit (axis 1), how many entries lie below lo or above hi.
#include <algorithm>
#include <vector>

#include "activations.h"
#include "vecmath.h"

// The per-plane count is a sum reduction, which `omp simd` vectorises only when told so.
#ifdef _OPENMP
#define FL_SIMD_COUNT _Pragma("omp simd reduction(+ : k)")
#else
#define FL_SIMD_COUNT
#endif

namespace fl {

namespace {

// cnt (C) += the entries of `rows` samples of x (rows, C, S) outside [lo, hi]. Each
// comparison is false for NaN, so NaN is never counted.
template <class T>
void count_rows(i64* cnt, const T* x, i64 rows, i64 C, i64 S, T lo, T hi) {
    for (i64 n = 0; n < rows; ++n) {
        const T* xn = x + n * C * S;
        if (S == 1) {
            FL_SIMD
            for (i64 c = 0; c < C; ++c) cnt[c] += (xn[c] < lo) | (xn[c] > hi);
            continue;
        }
        for (i64 c = 0; c < C; ++c) {
            const T* p = xn + c * S;
            i64 k = 0;
            FL_SIMD_COUNT
            for (i64 s = 0; s < S; ++s) k += (p[s] < lo) | (p[s] > hi);
            cnt[c] += k;
        }
    }
}

}  // namespace

template <class T>
void count_outside(i64* counts, const T* x, i64 N, i64 C, i64 S, T lo, T hi) {
    const i64 row = C * S;
    if (N == 0 || row == 0) return;
    // Blocks of whole samples fixed by the shape, each counted into its own row of partial
    // counts; integer sums are exact, so the result is the same for any thread count.
    const i64 per_block = std::max<i64>(1, kGrainSelect / row);
    const i64 blocks = (N + per_block - 1) / per_block;
    if (blocks == 1) {
        count_rows(counts, x, N, C, S, lo, hi);
        return;
    }
    std::vector<i64> partial(static_cast<size_t>(checked_workspace_size(blocks, C, "count_outside")), 0);  // (blocks, C)
    parallel_for(blocks, [&](i64 b) {
        const i64 n0 = b * per_block;
        count_rows(partial.data() + b * C, x + n0 * row, std::min(per_block, N - n0), C, S, lo, hi);
    });
    for (i64 b = 0; b < blocks; ++b)
        for (i64 c = 0; c < C; ++c) counts[c] += partial[static_cast<size_t>(b * C + c)];
}

template void count_outside<float>(i64*, const float*, i64, i64, i64, float, float);
template void count_outside<double>(i64*, const double*, i64, i64, i64, double, double);

}  // namespace fl
