// out = x + alpha*y over flat arrays: the trial points and the gradient differences of L-BFGS.
#include "lbfgs.h"
#include "optim.h"

namespace fl {

// Per element, in T: out[i] = x[i] + T(alpha)*y[i] (two roundings, as the oracle; this file
// is compiled without fused multiply-adds).
template <class T>
void add_scaled_forward(T* out, const T* x, const T* y, i64 n, double alpha) {
    const T a = static_cast<T>(alpha);
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        FL_OMP_SIMD
        for (i64 i = i0; i < i1; ++i) out[i] = x[i] + a * y[i];
    }, optim_detail::kMinPerThread);
}

template void add_scaled_forward<float>(float*, const float*, const float*, i64, double);
template void add_scaled_forward<double>(double*, const double*, const double*, i64, double);

}  // namespace fl
