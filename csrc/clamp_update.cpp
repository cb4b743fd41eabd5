// Gradient clipping by value: clamp a flat buffer in place to [-limit, limit].
#include <atomic>

#include "optim.h"

namespace fl {

// The bound is limit rounded to T once. NaN compares false both ways, so it is left as it is
// and not counted (numpy.clip propagates it too). The count is a sum of integers, the same
// for any split into chunks.
template <class T>
i64 clamp_update(T* x, i64 n, double limit) {
    // x (n)
    const T hi = static_cast<T>(limit), lo = -hi;
    std::atomic<i64> clamped{0};
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        i64 count = 0;
        for (i64 i = i0; i < i1; ++i) {
            const T v = x[i];
            const bool above = v > hi, below = v < lo;
            count += static_cast<i64>(above || below);
            x[i] = above ? hi : (below ? lo : v);
        }
        clamped.fetch_add(count, std::memory_order_relaxed);
    }, optim_detail::kMinPerThread);
    return clamped.load();
}

template i64 clamp_update<float>(float*, i64, double);
template i64 clamp_update<double>(double*, i64, double);

}  // namespace fl
