// Pooling kernels over NCHW planes. Dims legend (see docs/kernels.md):
//   N batch, C channels, H/W input height/width, PH/PW window height/width,
//   OH/OW output height/width: OH = (H + 2*pad - PH) / stride + 1.
// Every pointer is row-major contiguous; dx is overwritten. The bindings validate the
// geometry (including pad <= PH/2, PW/2, so every window holds a real element when H, W > 0).
#pragma once
#include <cstdint>

#include "common.h"

namespace fl {

struct PoolGeometry {
    i64 N, C, H, W;    // input
    i64 PH, PW;        // window
    i64 stride, pad;
    i64 OH, OW;        // output
};

// ---- maxpool2d.cpp
// out (N,C,OH,OW) = window maxima; argmax (N,C,OH,OW) = flat h*W + w of the element chosen
// (the first NaN of the window in row-major order if any, else its first maximum). int32,
// half the bytes of int64 written here and read by the backward; the binding refuses planes
// of more than 2**31 pixels.
template <class T>
void maxpool2d_forward(T* out, std::int32_t* argmax, const T* x, const PoolGeometry& g);
// Smallest and largest entry of argmax (n entries); lo = hi = 0 when n == 0. The binding
// rejects indices outside [0, H*W) before maxpool2d_backward runs.
void maxpool2d_argmax_range(const std::int32_t* argmax, i64 n, std::int32_t* lo, std::int32_t* hi);
// dx (N,C,H,W) = 0, then dout (N,C,OH,OW) added at argmax, plane by plane, in output order.
// Requires every argmax entry in [0, H*W).
template <class T>
void maxpool2d_backward(T* dx, const T* dout, const std::int32_t* argmax, i64 N, i64 C, i64 H, i64 W,
                        i64 OH, i64 OW);

// ---- avgpool2d.cpp
// out (N,C,OH,OW) = mean over the in-bounds elements of each window.
template <class T>
void avgpool2d_forward(T* out, const T* x, const PoolGeometry& g);
// dx (N,C,H,W): each dout entry divided by its window's in-bounds count and added to those
// elements.
template <class T>
void avgpool2d_backward(T* dx, const T* dout, const PoolGeometry& g);

}  // namespace fl
