// Gradient clipping by global norm: rescale a flat buffer in place.
#include "optim.h"

namespace fl {

// Per element i: x[i] = (T)((double)x[i] * alpha). The product is formed in double and rounded
// to T once, so a float32 gradient rescaled to a target norm misses it by at most half an ulp
// per entry (the oracle does the same operations, so both backends give the same bits).
template <class T>
void scale_update(T* x, i64 n, double alpha) {
    // x (n)
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        FL_OMP_SIMD
        for (i64 i = i0; i < i1; ++i) x[i] = static_cast<T>(static_cast<double>(x[i]) * alpha);
    }, optim_detail::kMinPerThread);
}

template void scale_update<float>(float*, i64, double);
template void scale_update<double>(double*, i64, double);

}  // namespace fl
