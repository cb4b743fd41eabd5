// Logistic sigmoid over any shape, flattened to n elements.
#include "activations.h"
#include "vecmath.h"

namespace fl {

// out = 1 / (1 + e^-x), evaluated through e^-|x| <= 1 (vm::sigmoid): finite for every finite
// x, 0 and 1 at -inf and +inf, NaN for NaN.
template <class T>
void sigmoid_forward(T* out, const T* x, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        const auto bounds = vm::bounds<T>();
        FL_SIMD
        for (i64 i = i0; i < i1; ++i) out[i] = vm::sigmoid(x[i], bounds);
    }, kGrainMath);
}

// With y = sigmoid(x): dy/dx = y (1 - y), so dx = dout * y * (1 - y), multiplied in the
// oracle's order.
template <class T>
void sigmoid_backward(T* dx, const T* dout, const T* y, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        FL_SIMD
        for (i64 i = i0; i < i1; ++i) dx[i] = dout[i] * y[i] * (T(1) - y[i]);
    }, kGrainSelect);
}

template void sigmoid_forward<float>(float*, const float*, i64);
template void sigmoid_forward<double>(double*, const double*, i64);
template void sigmoid_backward<float>(float*, const float*, const float*, i64);
template void sigmoid_backward<double>(double*, const double*, const double*, i64);

}  // namespace fl
