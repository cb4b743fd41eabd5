// Softmax over the last axis of (N, K), one row per iteration of the outer loop.
#include "activations.h"
#include "vecmath.h"

namespace fl {

namespace {

// Rows handed to one thread at least: a row costs ~K exp evaluations.
i64 rows_per_thread(i64 K) { return kGrainMath / (K > 0 ? K : 1) + 1; }

}  // namespace

// Per row z = x[n]: out = vm::softmax_row(z), which keeps every exponent <= 0 and gives NaN
// for a row holding NaN, +inf or only -inf, like the oracle.
template <class T>
void softmax_forward(T* out, const T* x, i64 N, i64 K) {
    parallel_chunks(N, [&](i64 n0, i64 n1) {
        const auto bounds = vm::bounds<T>();
        T zmax;
        for (i64 n = n0; n < n1; ++n) vm::softmax_row(out + n * K, x + n * K, K, bounds, zmax);
    }, rows_per_thread(K));
}

// With y = softmax(z) and g = dout: dy_j/dz_k = y_j (delta_jk - y_k), so
//   dx_k = sum_j g_j y_j (delta_jk - y_k) = y_k (g_k - sum_j g_j y_j).
// The inner sum is accumulated in double in index order.
template <class T>
void softmax_backward(T* dx, const T* dout, const T* y, i64 N, i64 K) {
    parallel_chunks(N, [&](i64 n0, i64 n1) {
        for (i64 n = n0; n < n1; ++n) {
            const T* g = dout + n * K;  // (K,)
            const T* yr = y + n * K;    // (K,)
            T* d = dx + n * K;          // (K,)
            double dot = 0.0;
            for (i64 k = 0; k < K; ++k) dot += static_cast<double>(g[k]) * static_cast<double>(yr[k]);
            const T s = static_cast<T>(dot);
            FL_SIMD
            for (i64 k = 0; k < K; ++k) d[k] = yr[k] * (g[k] - s);
        }
    }, rows_per_thread(K) * 4);
}

template void softmax_forward<float>(float*, const float*, i64, i64);
template void softmax_forward<double>(double*, const double*, i64, i64);
template void softmax_backward<float>(float*, const float*, const float*, i64, i64);
template void softmax_backward<double>(double*, const double*, const double*, i64, i64);

}  // namespace fl
