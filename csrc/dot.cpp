// Dot product of two flat arrays, accumulated in double.
#include <algorithm>
#include <vector>

#include "lbfgs.h"
#include "optim.h"

namespace fl {

namespace {

// As sum_squares (penalties.cpp): fixed blocks of kBlock elements, each summed on 8 fixed
// lanes (element i on lane i % 8) combined pairwise, the block sums added in block order.
// Nothing depends on the thread count or the SIMD width.
constexpr i64 kBlock = 4096;

template <class T>
double block_dot(const T* x, const T* y, i64 n) {
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const i64 n8 = n - n % 8;
    for (i64 i = 0; i < n8; i += 8)
        for (int j = 0; j < 8; ++j) lane[j] += static_cast<double>(x[i + j]) * static_cast<double>(y[i + j]);
    for (i64 i = n8; i < n; ++i) lane[i - n8] += static_cast<double>(x[i]) * static_cast<double>(y[i]);
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

}  // namespace

template <class T>
double dot(const T* x, const T* y, i64 n) {
    // x, y (n)
    if (n <= kBlock) return block_dot(x, y, n);
    const i64 blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(static_cast<size_t>(blocks));  // (blocks,)
    parallel_chunks(blocks, [&](i64 b0, i64 b1) {
        for (i64 b = b0; b < b1; ++b) {
            const i64 i0 = b * kBlock, len = std::min(kBlock, n - i0);
            partial[b] = block_dot(x + i0, y + i0, len);
        }
    }, optim_detail::kMinPerThread / kBlock);
    double total = 0.0;
    for (i64 b = 0; b < blocks; ++b) total += partial[b];
    return total;
}

template double dot<float>(const float*, const float*, i64);
template double dot<double>(const double*, const double*, i64);

}  // namespace fl
