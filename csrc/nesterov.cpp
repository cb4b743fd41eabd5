// Nesterov's accelerated gradient in its momentum form (Bengio et al. 2013), over a flat buffer.
#include "optim.h"

namespace fl {

// Per element i, in T:
//   1. g = grad[i] + weight_decay*param[i] + l1*sign(param[i])
//   2. v_prev = v[i]
//   3. v[i] = v_prev*momentum - lr*g
//   4. param[i] += (-momentum)*v_prev + (1+momentum)*v[i]
// The coefficients -momentum and 1+momentum are formed in double and rounded to T once,
// as NumPy does with the oracle's Python-float scalars.
template <class T>
void nesterov_update(T* param, const T* grad, T* v, i64 n, double lr, double momentum, double weight_decay,
                     double l1) {
    // param (n), grad (n), v (n)
    const T lr_t = static_cast<T>(lr), mom = static_cast<T>(momentum);
    const T neg_mom = static_cast<T>(-momentum), one_plus_mom = static_cast<T>(1.0 + momentum);
    optim_detail::with_penalty<T>(weight_decay, l1, [&](auto pen) {
        parallel_chunks(n, [&](i64 i0, i64 i1) {
            FL_OMP_SIMD
            for (i64 i = i0; i < i1; ++i) {
                const T g = pen(grad[i], param[i]);
                const T v_prev = v[i];
                const T vi = v_prev * mom - lr_t * g;
                v[i] = vi;
                param[i] += neg_mom * v_prev + one_plus_mom * vi;
            }
        }, optim_detail::kMinPerThread);
    });
}

template void nesterov_update<float>(float*, const float*, float*, i64, double, double, double, double);
template void nesterov_update<double>(double*, const double*, double*, i64, double, double, double, double);

}  // namespace fl
