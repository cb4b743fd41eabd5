// Convolution kernels over NCHW images. Dims legend (see docs/kernels.md):
//   N batch, C input channels, H/W input height/width,
//   FN/FH/FW filters and filter height/width, OH/OW output height/width,
//   K = C*FH*FW (one im2col column), P = OH*OW (output pixels of one image).
// Every pointer is row-major contiguous. dx is overwritten; dW and db are accumulated (+=).
// The bindings validate the geometry: stride >= 1, pad >= 0, H + 2*pad >= FH,
// W + 2*pad >= FW, OH = (H + 2*pad - FH) / stride + 1 (likewise OW), and every size fits int64.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common.h"
#include "pool.h"

namespace fl {

struct ConvGeometry {
    i64 N, C, H, W;  // input x (N,C,H,W)
    i64 FN, FH, FW;  // filters (FN,C,FH,FW); FN is unused by im2col / col2im
    i64 stride, pad;
    i64 OH, OW;      // output (N,FN,OH,OW)
};

// Which algorithm float32 convolutions run (conv2d.cpp); float64 always runs im2col + GEMM,
// the exact reference the gradient checks use. kConvAuto picks per layer and pass
// (winograd.h, conv_direct.h); kConvWinograd runs Winograd wherever it applies, kConvDirect
// the direct path wherever it applies, im2col elsewhere.
enum ConvAlgorithm : int { kConvAuto = 0, kConvIm2col = 1, kConvWinograd = 2, kConvDirect = 3 };

// The fewest items of this many multiply-adds each that a parallel loop over them gives a
// thread (2^20 multiply-adds before a second thread is worth waking): parallel_for's
// min_per_thread for the convolution paths' GEMM-like work.
inline i64 min_items_macs(double macs_per_item) {
    return std::max<i64>(1, static_cast<i64>(double(1 << 20) / std::max(1.0, macs_per_item)));
}
void set_conv_algorithm(int algorithm);
int conv_algorithm();

// ---- im2col.cpp (the contract's textbook layout)
// col (N*OH*OW, C*FH*FW) from x (N,C,H,W): row (n*OH + oh)*OW + ow, column (c*FH + i)*FW + j
// holds x[n, c, oh*stride + i - pad, ow*stride + j - pad], or 0 where that lies in the padding.
template <class T>
void im2col(T* col, const T* x, const ConvGeometry& g);
// dx (N,C,H,W) = the adjoint of im2col applied to col (N*OH*OW, C*FH*FW): every entry of col
// added to its source pixel, padding dropped.
template <class T>
void col2im(T* dx, const T* col, const ConvGeometry& g);

// ---- conv2d.cpp
// out (N,FN,OH,OW) = W (FN,C,FH,FW) cross-correlated with x (N,C,H,W), plus b (FN,).
template <class T>
void conv2d_forward(T* out, const T* x, const T* W, const T* b, const ConvGeometry& g);
// out = max(conv2d_forward(x, W, b), 0), NaN propagating like relu_forward.
template <class T>
void conv2d_relu_forward(T* out, const T* x, const T* W, const T* b, const ConvGeometry& g);
// dx (N,C,H,W) overwritten (skipped when null); dW (FN,C,FH,FW) +=; db (FN,) +=.
template <class T>
void conv2d_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, const ConvGeometry& g);
// conv2d_backward with dout replaced by (dout where out > 0, else 0); out (N,FN,OH,OW) is the
// fused forward's output.
template <class T>
void conv2d_relu_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, const T* out,
                          const ConvGeometry& g);


// Convolution, ReLU and max pooling in one pass; pg is the pooling of the (N, FN, OH, OW)
// convolution output, and argmax indexes its (OH, OW) planes.
template <class T>
void conv2d_relu_maxpool2d_forward(T* out, std::int32_t* argmax, const T* x, const T* W, const T* b,
                                   const ConvGeometry& g, const PoolGeometry& pg);
template <class T>
void conv2d_relu_maxpool2d_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, const T* out,
                                    const std::int32_t* argmax, i64 POH, i64 POW, const ConvGeometry& g);

}  // namespace fl
