// Largest absolute value of a flat array (the max-norm the L-BFGS tolerances are stated in).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "lbfgs.h"
#include "optim.h"

namespace fl {

namespace {

constexpr i64 kBlock = 4096;

// A NaN is remembered apart: a comparison with NaN is false, so a running maximum would
// silently skip it.
template <class T>
void block_max(const T* x, i64 n, T& m, bool& nan) {
    T best = T(0);
    bool seen_nan = false;
    for (i64 i = 0; i < n; ++i) {
        const T a = std::fabs(x[i]);
        best = a > best ? a : best;
        seen_nan |= a != a;
    }
    m = best;
    nan = seen_nan;
}

}  // namespace

template <class T>
double max_abs(const T* x, i64 n) {
    // x (n). A maximum is exact and order-free: any partition gives the same answer, and a
    // fixed one is kept anyway so the work per block does not depend on the thread count.
    const i64 blocks = (n + kBlock - 1) / kBlock;
    std::vector<T> partial(static_cast<size_t>(blocks));       // (blocks,)
    std::vector<char> nan(static_cast<size_t>(blocks), 0);     // (blocks,)
    parallel_chunks(blocks, [&](i64 b0, i64 b1) {
        for (i64 b = b0; b < b1; ++b) {
            const i64 i0 = b * kBlock, len = std::min(kBlock, n - i0);
            bool f = false;
            block_max(x + i0, len, partial[b], f);
            nan[b] = f;
        }
    }, optim_detail::kMinPerThread / kBlock);
    T best = T(0);
    for (i64 b = 0; b < blocks; ++b) {
        if (nan[b]) return std::numeric_limits<double>::quiet_NaN();
        best = std::max(best, partial[b]);
    }
    return static_cast<double>(best);
}

template double max_abs<float>(const float*, i64);
template double max_abs<double>(const double*, i64);

}  // namespace fl
