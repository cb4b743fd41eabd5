// The sparse backward of a float32 convolution fused with ReLU and max pooling
// (conv_pooled.cpp): the layers below a pooling in an image network, which also need dx.
//
// Dims legend: N batch; C input channels, Cp = C rounded up to a whole number of 16-float
// vectors, CV = Cp/16; H, W input plane; pad; Hp = H + 2*pad, Wp = W + 2*pad the padded
// plane; FN filters of FH x FW, T = FH*FW taps, tap t = i*FW + j; stride s; OH, OW output
// plane, P = OH*OW; PP pixels of a pooled plane.
//
// The gradient of the convolution's output y is zero except at each pooling window's argmax,
// and there only where the pooled out > 0 (the ReLU's mask). With m = dout where out > 0 and
// the entries (f, q) of one image whose m is not zero (a NaN counts), p = argmax[f][q]:
//   dW[f][c][t] += sum over entries of f of m * x[c][oh(p)*s + i - pad][ow(p)*s + j - pad]
//   dx[c][.][.] += m * W[f][c][t] at the same input pixels, for every entry
//   db[f]       += sum over q of m[f][q]
// 2x2 pooling leaves a quarter of the dense products, and a ReLU about half of those. The
// image is held channel-last and zero-padded, xc (Hp*Wp, Cp): one tap of one entry is then
// CV aligned vector loads at a fixed offset from the entry's corner pixel, for any stride
// and any filter size, and dx is gathered the same way into dxc (Hp*Wp, Cp).
#pragma once
#include <cstdint>

#include "common.h"
#include "conv.h"

namespace fl {

// Whether the fused convolution + ReLU + max pooling backward of geometry g, pooled planes of
// PP pixels, runs here: an AVX-512 CPU, the algorithm "auto" or "direct", one image's buffers
// within a cap; "auto" also asks that the sparse products be at most half the dense ones
// (2*PP*Cp <= P*C: pooling that keeps a quarter of the pixels or fewer over 8 or more
// channels).
bool pooled_backward_applies(const ConvGeometry& g, i64 PP);

// dx (N, C, H, W) overwritten when non-null; dW (FN, C, FH, FW) and db (FN,) +=; dout, out,
// argmax (N, FN, PP), argmax indexing the (OH, OW) planes and within them (the bindings check).
// Returns false with dW and db unchanged (dx may be partly written) when x holds an infinity
// or NaN, or, with dx, W does: the dense sums multiply the zero gradient of the other pixels
// by them (0 * inf = NaN), which these do not, so the caller runs those. The same bits for
// any thread count.
bool pooled_backward(float* dx, float* dW, float* db, const float* dout, const float* x, const float* W,
                     const float* out, const std::int32_t* argmax, i64 PP, const ConvGeometry& g);

// Bytes pooled_backward asks for (0 when it does not apply), for fastlayers.profile: per
// thread the channel-last image (and its gradient, with dx), the masked dout and the entries;
// on the calling thread the dW and db partials, the rearranged filters and the pixel table.
i64 pooled_backward_scratch_bytes(const ConvGeometry& g, i64 PP, bool dx, i64 threads);

}  // namespace fl
