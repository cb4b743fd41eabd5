// HardTanh (clip to [lo, hi]) over any shape, flattened to n elements.
#include "activations.h"
#include "vecmath.h"

namespace fl {

// out = clip(x, lo, hi). Each comparison is false for NaN, which therefore passes through
// (np.clip propagates NaN too). Bounds of +-inf clip nothing on their side.
template <class T>
void hardtanh_forward(T* out, const T* x, T lo, T hi, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        FL_SIMD
        for (i64 i = i0; i < i1; ++i) {
            T v = x[i];
            v = v < lo ? lo : v;
            out[i] = v > hi ? hi : v;
        }
    }, kGrainSelect);
}

// dx = dout strictly inside (lo, hi), else 0: at the bounds themselves the clip is flat on
// one side, and the oracle (like PyTorch) passes no gradient there. NaN passes none either.
template <class T>
void hardtanh_backward(T* dx, const T* dout, const T* x, T lo, T hi, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        FL_SIMD
        for (i64 i = i0; i < i1; ++i) {
            const T v = x[i], g = dout[i];
            dx[i] = (v > lo) & (v < hi) ? g : T(0);
        }
    }, kGrainSelect);
}

template void hardtanh_forward<float>(float*, const float*, float, float, i64);
template void hardtanh_forward<double>(double*, const double*, double, double, i64);
template void hardtanh_backward<float>(float*, const float*, const float*, float, float, i64);
template void hardtanh_backward<double>(double*, const double*, const double*, double, double, i64);

}  // namespace fl
