// Mean squared error, the textbook's half sum of squares averaged over the batch:
// y, t of shape (N, ...) flattened to n = N * (product of the other axes) elements.
#include <vector>

#include "losses.h"
#include "vecmath.h"

namespace fl {

namespace {

// The sum runs over fixed blocks of this many elements; each block is summed in double by
// kLanes interleaved partial sums (a fixed pattern the compiler can keep in vector
// registers), and the block sums are added in block order afterwards. Neither the blocks nor
// the order depend on the thread count, so the result is bit-identical for any of them.
constexpr i64 kBlock = 4096;
constexpr int kLanes = 8;

}  // namespace

// loss = 0.5 * sum_i (y_i - t_i)^2 / N, with the difference formed in double like the oracle.
template <class T>
double mse_forward(const T* y, const T* t, i64 N, i64 n) {
    if (N == 0) return 0.0;
    const i64 blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> block_sum(static_cast<size_t>(blocks));
    parallel_for(blocks, [&](i64 blk) {
        const i64 i0 = blk * kBlock, i1 = i0 + kBlock < n ? i0 + kBlock : n;
        double lane[kLanes] = {};
        i64 i = i0;
        for (; i + kLanes <= i1; i += kLanes)
            for (int j = 0; j < kLanes; ++j) {
                const double d = static_cast<double>(y[i + j]) - static_cast<double>(t[i + j]);
                lane[j] += d * d;
            }
        for (int j = 0; i < i1; ++i, ++j) {
            const double d = static_cast<double>(y[i]) - static_cast<double>(t[i]);
            lane[j] += d * d;
        }
        double s = 0.0;
        for (int j = 0; j < kLanes; ++j) s += lane[j];
        block_sum[blk] = s;
    }, 4);
    double total = 0.0;
    for (i64 blk = 0; blk < blocks; ++blk) total += block_sum[blk];
    return 0.5 * total / static_cast<double>(N);
}

// d loss / dy = dloss * (y - t) / N; the scale is rounded to T once, as the oracle's
// Python-float scalar is when it meets a T array.
template <class T>
void mse_backward(T* dy, const T* y, const T* t, double dloss, i64 N, i64 n) {
    const T scale = vm::narrow<T>(dloss / static_cast<double>(N > 0 ? N : 1));
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        FL_SIMD
        for (i64 i = i0; i < i1; ++i) dy[i] = (y[i] - t[i]) * scale;
    }, i64{1} << 15);
}

template double mse_forward<float>(const float*, const float*, i64, i64);
template double mse_forward<double>(const double*, const double*, i64, i64);
template void mse_backward<float>(float*, const float*, const float*, double, i64, i64);
template void mse_backward<double>(double*, const double*, const double*, double, i64, i64);

}  // namespace fl
