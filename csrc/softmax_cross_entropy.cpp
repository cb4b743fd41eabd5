// Softmax followed by cross-entropy, fused: logits (N,K) -> probs (N,K) and the mean loss.
// Targets are either integer labels (N,) or rows of a (N,K) target distribution (one-hot or
// soft); exactly one of labels / targets is non-null.
#include <cmath>
#include <vector>

#include "activations.h"
#include "kernels.h"
#include "vecmath.h"

namespace fl {

// Per row, with z = logits[n], zmax = max_k z_k, e_k = exp(z_k - zmax), S = sum_k e_k and
// lse = zmax + log S (vm::softmax_row):
//   probs[n,k] = e_k / S
//   loss_n     = lse - z_label               (labels)
//              = sum_k t_k (lse - z_k)       (targets)
// Subtracting zmax keeps exp() <= 1, so logits of +-1e4 give a finite loss. The exponentials
// are vm::exp in T, which vectorises (libm's exp is an opaque call per element, and at the
// networks' 100 x 10 it was most of the kernel's time); S, lse and the loss are in double.
// Row losses are summed in row order after the parallel loop, and rows are split by shape
// only: the result is the same for any thread count.
template <class T>
double softmax_cross_entropy_forward(T* probs, const T* logits, const std::int64_t* labels,
                                     const T* targets, i64 N, i64 K) {
    std::vector<double> row_loss(static_cast<size_t>(N));
    parallel_chunks(N, [&](i64 n0, i64 n1) {
        const auto bounds = vm::bounds<T>();
        for (i64 n = n0; n < n1; ++n) {
            const T* z = logits + n * K;  // (K,)
            T zmax;
            const double sum = vm::softmax_row(probs + n * K, z, K, bounds, zmax);
            const double lse = static_cast<double>(zmax) + std::log(sum);
            if (labels) {
                row_loss[n] = lse - static_cast<double>(z[labels[n]]);
            } else {
                const T* t = targets + n * K;
                double l = 0.0;
                for (i64 k = 0; k < K; ++k)
                    if (t[k] != T(0)) l += static_cast<double>(t[k]) * (lse - static_cast<double>(z[k]));
                row_loss[n] = l;
            }
        }
    }, kGrainMath / (K > 0 ? K : 1) + 1);
    double total = 0.0;
    for (i64 n = 0; n < N; ++n) total += row_loss[n];
    return N > 0 ? total / static_cast<double>(N) : 0.0;
}

// d loss / d logits = dloss * (probs - target) / N, target being one-hot(label) or the row t.
template <class T>
void softmax_cross_entropy_backward(T* dlogits, const T* probs, const std::int64_t* labels,
                                    const T* targets, double dloss, i64 N, i64 K) {
    const T scale = static_cast<T>(dloss / static_cast<double>(N > 0 ? N : 1));
    parallel_for(N, [&](i64 n) {
        const T* p = probs + n * K;
        T* d = dlogits + n * K;
        if (labels) {
            for (i64 k = 0; k < K; ++k) d[k] = p[k] * scale;
            d[labels[n]] = (p[labels[n]] - T(1)) * scale;
        } else {
            const T* t = targets + n * K;
            for (i64 k = 0; k < K; ++k) d[k] = (p[k] - t[k]) * scale;
        }
    }, 64);
}

template double softmax_cross_entropy_forward<float>(float*, const float*, const std::int64_t*, const float*, i64, i64);
template double softmax_cross_entropy_forward<double>(double*, const double*, const std::int64_t*, const double*, i64, i64);
template void softmax_cross_entropy_backward<float>(float*, const float*, const std::int64_t*, const float*, double, i64, i64);
template void softmax_cross_entropy_backward<double>(double*, const double*, const std::int64_t*, const double*, double, i64, i64);

}  // namespace fl
