// ReLU over any shape, flattened to n elements.
#include "kernels.h"
#include "vecmath.h"

namespace fl {

// out = max(x, 0). Written as a select rather than std::max so NaN propagates (x > 0 is
// false for NaN, but we keep x itself when it is not a number).
template <class T>
void relu_forward(T* out, const T* x, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        for (i64 i = i0; i < i1; ++i) out[i] = x[i] > T(0) || x[i] != x[i] ? x[i] : T(0);
    }, 1 << 15);
}

// dx = dout where x > 0, else 0 (the subgradient at 0 is taken as 0, as the textbook does).
template <class T>
void relu_backward(T* dx, const T* dout, const T* x, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        vm::relu_mask(dx + i0, x + i0, dout + i0, i1 - i0);
    }, 1 << 15);
}

template void relu_forward<float>(float*, const float*, i64);
template void relu_forward<double>(double*, const double*, i64);
template void relu_backward<float>(float*, const float*, const float*, i64);
template void relu_backward<double>(double*, const double*, const double*, i64);

}  // namespace fl
