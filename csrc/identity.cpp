// Identity: a copy, forward and backward (Flatten's backward and Dropout at inference use it).
#include <cstring>

#include "activations.h"

namespace fl {

namespace {
template <class T>
void copy(T* dst, const T* src, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        if (i1 > i0) std::memcpy(dst + i0, src + i0, static_cast<size_t>(i1 - i0) * sizeof(T));
    }, kGrainSelect);
}
}  // namespace

// out = x
template <class T>
void identity_forward(T* out, const T* x, i64 n) {
    copy(out, x, n);
}

// dx = dout
template <class T>
void identity_backward(T* dx, const T* dout, i64 n) {
    copy(dx, dout, n);
}

template void identity_forward<float>(float*, const float*, i64);
template void identity_forward<double>(double*, const double*, i64);
template void identity_backward<float>(float*, const float*, i64);
template void identity_backward<double>(double*, const double*, i64);

}  // namespace fl
