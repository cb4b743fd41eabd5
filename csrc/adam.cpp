// Adam (Kingma & Ba 2015) with bias correction, over a flat parameter buffer.
#include <cmath>

#include "isa_dispatch.h"
#include "optim.h"

namespace fl {

// Per element i, in T, with c1 = 1 - beta1^step and c2 = 1 - beta2^step computed once in
// double (beta^step as Python computes it, with pow):
//   1. g = grad[i] + weight_decay*param[i] + l1*sign(param[i])
//   2. m[i] = m[i]*beta1 + (1-beta1)*g
//   3. v[i] = v[i]*beta2 + ((1-beta2)*g)*g
//   4. m_hat = m[i] * (1/c1), v_hat = v[i] * (1/c2)
//   5. param[i] -= (lr*m_hat) / (sqrt(v_hat) + eps)        (eps outside the root)
// Steps 1-3 round exactly as the oracle does, so m and v match it bit for bit. Step 4
// multiplies by the reciprocals (rounded to T once) where the oracle divides: each hat
// differs by at most an ulp or so, and the loop runs 1.5-2x faster with two divisions
// fewer per element (divisions, not memory, bound this loop).
namespace {

template <class T>
struct AdamCoefficients {
    T lr, eps, b1, b2, one_minus_b1, one_minus_b2, inv_c1, inv_c2;
};

template <class T, class Pen>
FL_ALWAYS_INLINE void adam_range(T* param, const T* grad, T* m, T* v, i64 i0, i64 i1, const AdamCoefficients<T>& k,
                                 Pen pen) {
    FL_OMP_SIMD
    for (i64 i = i0; i < i1; ++i) {
        const T g = pen(grad[i], param[i]);
        const T mi = m[i] * k.b1 + k.one_minus_b1 * g;
        const T vi = v[i] * k.b2 + k.one_minus_b2 * g * g;
        m[i] = mi;
        v[i] = vi;
        const T m_hat = mi * k.inv_c1, v_hat = vi * k.inv_c2;
        param[i] -= k.lr * m_hat / (std::sqrt(v_hat) + k.eps);
    }
}

// The loop is bound by the division and the square root, whose throughput per instruction
// is about the same at any vector width: 16 lanes do 4x the work of the baseline's 4.
// This file is compiled without FMA contraction, and division and square root are correctly
// rounded, so both builds give the same bits.
#ifdef FL_AVX512_DISPATCH
template <class T, class Pen>
FL_TARGET_AVX512 void adam_range_avx512(T* param, const T* grad, T* m, T* v, i64 i0, i64 i1,
                                        const AdamCoefficients<T>& k, Pen pen) {
    adam_range(param, grad, m, v, i0, i1, k, pen);
}
#endif

template <class T, class Pen>
void adam_range_base(T* param, const T* grad, T* m, T* v, i64 i0, i64 i1, const AdamCoefficients<T>& k, Pen pen) {
    adam_range(param, grad, m, v, i0, i1, k, pen);
}

}  // namespace

template <class T>
void adam_update(T* param, const T* grad, T* m, T* v, i64 n, double lr, double beta1, double beta2, double eps,
                 i64 step, double weight_decay, double l1) {
    // param (n), grad (n), m (n), v (n)
    const double s = static_cast<double>(step);
    const AdamCoefficients<T> k{static_cast<T>(lr),
                                static_cast<T>(eps),
                                static_cast<T>(beta1),
                                static_cast<T>(beta2),
                                static_cast<T>(1.0 - beta1),
                                static_cast<T>(1.0 - beta2),
                                static_cast<T>(1.0 / (1.0 - std::pow(beta1, s))),
                                static_cast<T>(1.0 / (1.0 - std::pow(beta2, s)))};
    optim_detail::with_penalty<T>(weight_decay, l1, [&](auto pen) {
        auto range = adam_range_base<T, decltype(pen)>;
#ifdef FL_AVX512_DISPATCH
        if (cpu_has_avx512()) range = adam_range_avx512<T, decltype(pen)>;
#endif
        parallel_chunks(n, [&](i64 i0, i64 i1) { range(param, grad, m, v, i0, i1, k, pen); },
                        optim_detail::kMinPerThread);
    });
}

template void adam_update<float>(float*, const float*, float*, float*, i64, double, double, double, double, i64,
                                 double, double);
template void adam_update<double>(double*, const double*, double*, double*, i64, double, double, double, double,
                                  i64, double, double);

}  // namespace fl
