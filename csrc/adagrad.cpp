// AdaGrad over a flat parameter buffer.
#include <cmath>

#include "optim.h"

namespace fl {

// Per element i, in T:
//   1. g = grad[i] + weight_decay*param[i] + l1*sign(param[i])
//   2. h[i] += g*g
//   3. param[i] -= (lr*g) / (sqrt(h[i]) + eps)
template <class T>
void adagrad_update(T* param, const T* grad, T* h, i64 n, double lr, double eps, double weight_decay, double l1) {
    // param (n), grad (n), h (n)
    const T lr_t = static_cast<T>(lr), eps_t = static_cast<T>(eps);
    optim_detail::with_penalty<T>(weight_decay, l1, [&](auto pen) {
        parallel_chunks(n, [&](i64 i0, i64 i1) {
            FL_OMP_SIMD
            for (i64 i = i0; i < i1; ++i) {
                const T g = pen(grad[i], param[i]);
                const T hi = h[i] + g * g;
                h[i] = hi;
                param[i] -= lr_t * g / (std::sqrt(hi) + eps_t);
            }
        }, optim_detail::kMinPerThread);
    });
}

template void adagrad_update<float>(float*, const float*, float*, i64, double, double, double, double);
template void adagrad_update<double>(double*, const double*, double*, i64, double, double, double, double);

}  // namespace fl
