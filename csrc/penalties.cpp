// Weight penalties: sum of squares (L2) and sum of absolute values (L1), in double; and the
// sum of squared differences of two arrays (the size of an optimizer's update).
#include <algorithm>
#include <cmath>
#include <vector>

#include "optim.h"

namespace fl {

namespace {

// Reductions are split into fixed blocks of kBlock elements; each block is summed on 8
// fixed lanes (element i on lane i % 8) combined pairwise, and the block sums are added
// in block order. Nothing depends on the thread count or on the SIMD width, so the
// result is bit-identical for any OMP_NUM_THREADS and any build.
constexpr i64 kBlock = 4096;

template <class T, class F>
double block_sum(const T* x, i64 n, F f) {
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const i64 n8 = n - n % 8;
    for (i64 i = 0; i < n8; i += 8)
        for (int j = 0; j < 8; ++j) lane[j] += f(static_cast<double>(x[i + j]));
    for (i64 i = n8; i < n; ++i) lane[i - n8] += f(static_cast<double>(x[i]));
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

template <class T, class F>
double blocked_sum(const T* x, i64 n, F f) {
    // x (n)
    if (n <= kBlock) return block_sum(x, n, f);
    const i64 blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(static_cast<size_t>(blocks));  // (blocks,)
    parallel_chunks(blocks, [&](i64 b0, i64 b1) {
        for (i64 b = b0; b < b1; ++b) {
            const i64 i0 = b * kBlock, len = std::min(kBlock, n - i0);
            partial[b] = block_sum(x + i0, len, f);
        }
    }, optim_detail::kMinPerThread / kBlock);
    double total = 0.0;
    for (i64 b = 0; b < blocks; ++b) total += partial[b];
    return total;
}

// The same blocks and lanes over the differences of two arrays, formed in double.
template <class T>
double block_sum_diff(const T* a, const T* b, i64 n) {
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const i64 n8 = n - n % 8;
    for (i64 i = 0; i < n8; i += 8)
        for (int j = 0; j < 8; ++j) {
            const double d = static_cast<double>(a[i + j]) - static_cast<double>(b[i + j]);
            lane[j] += d * d;
        }
    for (i64 i = n8; i < n; ++i) {
        const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
        lane[i - n8] += d * d;
    }
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

}  // namespace

template <class T>
double sum_squares_diff(const T* a, const T* b, i64 n) {
    // a, b (n)
    if (n <= kBlock) return block_sum_diff(a, b, n);
    const i64 blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(static_cast<size_t>(blocks));  // (blocks,)
    parallel_chunks(blocks, [&](i64 b0, i64 b1) {
        for (i64 k = b0; k < b1; ++k) {
            const i64 i0 = k * kBlock, len = std::min(kBlock, n - i0);
            partial[k] = block_sum_diff(a + i0, b + i0, len);
        }
    }, optim_detail::kMinPerThread / kBlock);
    double total = 0.0;
    for (i64 k = 0; k < blocks; ++k) total += partial[k];
    return total;
}

template <class T>
double sum_squares(const T* x, i64 n) {
    return blocked_sum(x, n, [](double v) { return v * v; });
}

template <class T>
double sum_abs(const T* x, i64 n) {
    return blocked_sum(x, n, [](double v) { return std::fabs(v); });
}

template double sum_squares<float>(const float*, i64);
template double sum_squares<double>(const double*, i64);
template double sum_abs<float>(const float*, i64);
template double sum_abs<double>(const double*, i64);
template double sum_squares_diff<float>(const float*, const float*, i64);
template double sum_squares_diff<double>(const double*, const double*, i64);

}  // namespace fl
