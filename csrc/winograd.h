// Winograd F(4x4, 3x3) convolution for float32 3x3 stride-1 layers (winograd.cpp).
// Dims legend: N batch; Cin, Cout input and output channels; H, W input plane; pad;
// OH = H + 2*pad - 2, OW likewise; th, tw = ceil(OH/4), ceil(OW/4) output tiles per side.
// The transformed filters U (36, Cin, Cout) are made by winograd_filters.
#pragma once
#include <cstdint>
#include <vector>

#include "common.h"
#include "conv.h"
#include "pool.h"

namespace fl {

// Whether a float32 convolution of geometry g takes the Winograd path, forward and backward
// (dx as the convolution of dout with the flipped filters, padded by 2 - pad).
bool winograd_applies(const ConvGeometry& g);

// U (36, Cin, Cout), xi = 6*i + j, from W (FN, C, 3, 3): U[xi][c][f] = (G W[f][c] G^T)[i][j]
// (Cin = C, Cout = FN); with `for_dx` the filters of dx's convolution, W[f][c] flipped in
// both axes with input and output swapped (Cin = FN, Cout = C). U is the calling thread's
// buffer, one for each value of for_dx, kept across calls: it holds until this thread asks
// for that kind again.
const float* winograd_filters(const float* W, i64 FN, i64 C, bool for_dx);

// Non-finite values. The transforms mix a whole 6x6 input tile into every output of its
// 4x4 tile, so one infinity or NaN would make outputs NaN that a direct sum leaves finite
// (inf - inf). Both functions therefore report whether everything they computed is finite,
// and the callers redo a non-finite result with im2col, whose NaN and infinities fall where
// the oracle's do. The check rides on loops that run anyway, so finite data pays nothing.

// out (N, Cout, OH, OW) = 3x3 cross-correlation of x (N, Cin, H, W), zero-padded by pad, with
// the filters U stands for, + b (Cout,) when b is non-null, then max(., 0) when relu. With
// pool (its N, C, H, W those of that output), out (N, Cout, POH, POW) and argmax are the max
// pooling of it instead, image by image as maxpool2d_forward pools (the same bits), and the
// full output never reaches memory; 2x2 windows at stride 2 over whole vectors of channels
// are pooled straight from the channel-last tiles. Returns whether every value before the
// ReLU was finite.
bool winograd_conv(float* out, const float* x, const float* U, const float* b, bool relu, i64 N, i64 Cin,
                   i64 H, i64 W, i64 Cout, i64 pad, const PoolGeometry* pool = nullptr,
                   std::int32_t* argmax = nullptr);

// dWc (FN, C, 3, 3) = sum over n, oh, ow of g[n, f, oh, ow] * xpad[n, c, oh + i, ow + j]
// (overwritten); g (N, FN, OH, OW) is the gradient of the convolution's output, x (N, C, H, W)
// its input. Returns whether every value is finite.
bool winograd_dW(float* dWc, const float* g, const float* x, const ConvGeometry& geo);

// Bytes the Winograd path of a float32 convolution of geometry g asks for (0 when it does
// not apply): the buffers each of the `threads` threads keeps across calls (at the largest
// any pass asks; with the pooling fused, one image's output too), plus those of the calling
// thread alone (the transformed filters, the dW partials, and the whole batch's output
// gradient where the pooling or ReLU is fused, with the ReLU alone its planes' sums). dx:
// whether the backward computes dx; fused: 0 conv alone, 1 with ReLU, 2 with ReLU and max
// pooling, of geometry pool where known (null otherwise: counted as a pooling that needs the
// planar output); backward: whether the backward runs here too (the fused pooled one may run
// conv_pooled.h's instead).
i64 winograd_scratch_bytes(const ConvGeometry& g, bool dx, int fused, i64 threads, bool backward,
                           const PoolGeometry* pool);

}  // namespace fl
