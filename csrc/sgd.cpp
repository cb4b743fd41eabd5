// Stochastic gradient descent over a flat parameter buffer.
#include "optim.h"

namespace fl {

// Per element i, in T:
//   1. g = grad[i] + weight_decay*param[i] + l1*sign(param[i])
//   2. param[i] -= lr*g
template <class T>
void sgd_update(T* param, const T* grad, i64 n, double lr, double weight_decay, double l1) {
    // param (n), grad (n)
    const T lr_t = static_cast<T>(lr);
    optim_detail::with_penalty<T>(weight_decay, l1, [&](auto pen) {
        parallel_chunks(n, [&](i64 i0, i64 i1) {
            FL_OMP_SIMD
            for (i64 i = i0; i < i1; ++i) {
                const T g = pen(grad[i], param[i]);
                param[i] -= lr_t * g;
            }
        }, optim_detail::kMinPerThread);
    });
}

template void sgd_update<float>(float*, const float*, i64, double, double, double);
template void sgd_update<double>(double*, const double*, i64, double, double, double);

}  // namespace fl
