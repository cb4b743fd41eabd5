// Momentum SGD over a flat parameter buffer.
#include "optim.h"

namespace fl {

// Per element i, in T (the oracle's order: v *= momentum, then v -= lr*g):
//   1. g = grad[i] + weight_decay*param[i] + l1*sign(param[i])
//   2. v[i] = v[i]*momentum - lr*g
//   3. param[i] += v[i]
template <class T>
void momentum_update(T* param, const T* grad, T* v, i64 n, double lr, double momentum, double weight_decay,
                     double l1) {
    // param (n), grad (n), v (n)
    const T lr_t = static_cast<T>(lr), mom = static_cast<T>(momentum);
    optim_detail::with_penalty<T>(weight_decay, l1, [&](auto pen) {
        parallel_chunks(n, [&](i64 i0, i64 i1) {
            FL_OMP_SIMD
            for (i64 i = i0; i < i1; ++i) {
                const T g = pen(grad[i], param[i]);
                const T vi = v[i] * mom - lr_t * g;
                v[i] = vi;
                param[i] += vi;
            }
        }, optim_detail::kMinPerThread);
    });
}

template void momentum_update<float>(float*, const float*, float*, i64, double, double, double, double);
template void momentum_update<double>(double*, const double*, double*, i64, double, double, double, double);

}  // namespace fl
