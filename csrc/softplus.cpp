// Softplus over any shape, flattened to n elements.
#include "activations.h"
#include "vecmath.h"

namespace fl {

// out = log(1 + e^x) = max(x, 0) + log1p(e^-|x|): e^-|x| <= 1 cannot overflow, and the
// log1p term is at most log 2, so the result is x itself (to rounding) for large x and
// e^x (accurately, no cancellation) for very negative x. NaN propagates through both terms.
template <class T>
void softplus_forward(T* out, const T* x, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        const auto bounds = vm::bounds<T>();
        FL_SIMD
        for (i64 i = i0; i < i1; ++i) {
            const T v = x[i];
            out[i] = (v > T(0) ? v : T(0)) + vm::log1p_unit(vm::exp(-std::fabs(v), bounds));
        }
    }, kGrainMath);
}

// d softplus / dx = sigmoid(x): dx = dout * sigmoid(x).
template <class T>
void softplus_backward(T* dx, const T* dout, const T* x, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        const auto bounds = vm::bounds<T>();
        FL_SIMD
        for (i64 i = i0; i < i1; ++i) dx[i] = dout[i] * vm::sigmoid(x[i], bounds);
    }, kGrainMath);
}

template void softplus_forward<float>(float*, const float*, i64);
template void softplus_forward<double>(double*, const double*, i64);
template void softplus_backward<float>(float*, const float*, const float*, i64);
template void softplus_backward<double>(double*, const double*, const double*, i64);

}  // namespace fl
