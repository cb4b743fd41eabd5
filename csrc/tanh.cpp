// Hyperbolic tangent over any shape, flattened to n elements.
#include "activations.h"
#include "vecmath.h"

namespace fl {

// out = tanh(x) through expm1(-2|x|) (vm::tanh): accurate near 0, +-1 for large |x|.
template <class T>
void tanh_forward(T* out, const T* x, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        const auto bounds = vm::bounds<T>();
        FL_SIMD
        for (i64 i = i0; i < i1; ++i) out[i] = vm::tanh(x[i], bounds);
    }, kGrainMath);
}

// With y = tanh(x): dy/dx = 1 - y^2, so dx = dout * (1 - y*y), in the oracle's order. (A build
// for a CPU with FMA may fuse y*y into the subtraction: one rounding fewer.)
template <class T>
void tanh_backward(T* dx, const T* dout, const T* y, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        FL_SIMD
        for (i64 i = i0; i < i1; ++i) dx[i] = dout[i] * (T(1) - y[i] * y[i]);
    }, kGrainSelect);
}

template void tanh_forward<float>(float*, const float*, i64);
template void tanh_forward<double>(double*, const double*, i64);
template void tanh_backward<float>(float*, const float*, const float*, i64);
template void tanh_backward<double>(double*, const double*, const double*, i64);

}  // namespace fl
