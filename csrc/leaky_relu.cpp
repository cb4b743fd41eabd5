// Leaky ReLU over any shape, flattened to n elements.
#include "activations.h"
#include "vecmath.h"

namespace fl {

// out = x where x > 0, else alpha * x. Written as x times a selected slope (1 or alpha): x * 1
// is x exactly, so this is bit for bit the oracle's value, and a select between two
// loop-invariant slopes vectorises (the 1 is vm::opaque, see there). NaN fails x > 0 and stays
// NaN through the product.
template <class T>
void leaky_relu_forward(T* out, const T* x, T alpha, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        const T one = vm::opaque(T(1)), a = alpha;
        FL_SIMD
        for (i64 i = i0; i < i1; ++i) {
            const T v = x[i];
            out[i] = v * (v > T(0) ? one : a);
        }
    }, kGrainSelect);
}

// dx = dout where x > 0, else alpha * dout (the slope at 0 is alpha, as in the oracle);
// dout * 1 is dout exactly, inf and NaN included.
template <class T>
void leaky_relu_backward(T* dx, const T* dout, const T* x, T alpha, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        const T one = vm::opaque(T(1)), a = alpha;
        FL_SIMD
        for (i64 i = i0; i < i1; ++i) {
            const T v = x[i], g = dout[i];
            dx[i] = g * (v > T(0) ? one : a);
        }
    }, kGrainSelect);
}

template void leaky_relu_forward<float>(float*, const float*, float, i64);
template void leaky_relu_forward<double>(double*, const double*, double, i64);
template void leaky_relu_backward<float>(float*, const float*, const float*, float, i64);
template void leaky_relu_backward<double>(double*, const double*, const double*, double, i64);

}  // namespace fl
