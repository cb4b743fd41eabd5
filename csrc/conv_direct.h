// Direct convolution for float32 stride-1 layers with few input channels (conv_direct.cpp):
// the first layer of an image network, where C*FH*FW is too short an inner dimension for
// im2col's GEMM to come near the machine's peak (simple_cnn's 1-channel 5x5 layer: K = 25).
//
// Dims legend: N batch; C input channels; H, W input plane; FN, FH, FW filters; pad;
// OH = H + 2*pad - FH + 1, OW likewise; Hp = H + 2*pad, Wp = W + 2*pad the padded plane;
// K = C*FH*FW taps, tap t = (c*FH + i)*FW + j; P = OH*OW; PP pixels of a pooled plane.
//
// The forward reads the padded image as one flat array xf (C*Hp*Wp): output pixel (oh, ow)
// sits at flat position p = oh*Wp + ow, and tap t reads xf[p + off_t], off_t = c*Hp*Wp +
// i*Wp + j. So every tap is one unaligned vector load of 16 consecutive positions, with no
// gathers and no im2col; positions with ow >= OW (the Wp - OW columns where a row wraps into
// the next) are computed and thrown away.
#pragma once
#include <cstdint>
#include <vector>

#include "common.h"
#include "conv.h"
#include "pool.h"

namespace fl {

// Whether a float32 convolution of geometry g takes the direct path (an AVX-512 CPU, stride 1,
// FW <= 16, one image's buffers within a cap; "auto" also asks for C*FH*FW <= 64, where it
// measured faster than im2col): the forward, and (direct_pooled_applies: C*FH*FW <= 64 in any
// mode) the backward of the convolution fused with ReLU and max pooling when dx is not wanted.
// Other fused backwards run conv_pooled.h's sparse backward or a dense one.
bool direct_applies(const ConvGeometry& g);
bool direct_pooled_applies(const ConvGeometry& g);

// out (N, FN, OH, OW) = conv(x, W) + b, then max(., 0) when relu: images in parallel.
void direct_forward(float* out, const float* x, const float* W, const float* b, bool relu, const ConvGeometry& g);

// The flat layout of one geometry (see above).
struct DirectLayout {
    i64 Wp = 0, plane = 0;  // padded width, padded plane Hp*Wp
    i64 Pr = 0;             // flat positions up to the last output pixel, (OH-1)*Wp + OW,
                            // rounded up to the forward's 32-position blocks
    i64 xlen = 0;           // floats of the padded image buffer: every load stays inside it
    std::vector<i64> off;   // (K,) flat offset of each tap
};

// The filters as the forward reads them: Wt (K, FNp), tap-major, FN padded with zero filters
// to FNp, a whole number of register blocks of fb filters; bias (FNp,) likewise; and the
// layout, so that a call works it out once, not once per image.
struct DirectFilters {
    std::vector<float> Wt, bias;
    i64 fb = 0, FNp = 0;
    DirectLayout layout;
};
DirectFilters direct_filters(const float* W, const float* b, const ConvGeometry& g);

// yn (FN, OH, OW) from xn (C, H, W): one image on the calling thread, for use inside a
// parallel loop over images (the fused convolution + pooling forward), which asks for at
// least direct_min_images(g) images per thread, as direct_forward does.
i64 direct_min_images(const ConvGeometry& g);
void direct_forward_image(float* yn, const float* xn, const DirectFilters& f, bool relu, const ConvGeometry& g);

// The convolution fused with ReLU and 2x2 stride-2 unpadded max pooling, where
// direct_pools_in_registers: out, argmax (N, FN, POH, POW), the bits of direct_forward's
// ReLU output pooled by maxpool2d_forward. 16 filters along each vector, so a window's four
// pixels are four registers and no convolution output is stored. Returns false, with
// nothing written, where it does not apply.
bool direct_pools_in_registers(const ConvGeometry& g, const PoolGeometry& pg);
bool direct_forward_pooled(float* out, std::int32_t* argmax, const float* x, const float* W, const float* b,
                           const ConvGeometry& g, const PoolGeometry& pg);

// The fused convolution + ReLU + max pooling backward without dx, where direct_pooled_applies:
// dW (FN, C, FH, FW) and db (FN,) +=. The gradient of the convolution's output is zero except at each pooling
// window's argmax, so, with m = dout where the pooled out > 0,
//   dW[f] += sum over pooled q of m[f][q] * patch(argmax[f][q]),   db[f] += sum over q of m[f][q]
// (patch(p): the K inputs output pixel p reads): a quarter of the dense sum's products for
// 2x2 pooling, and no gradient plane is ever built. dout, out, argmax (N, FN, PP); argmax
// indexes the (OH, OW) planes. Returns false, with nothing changed, when x holds an infinity
// or NaN: the dense sum multiplies the zero gradient of every other pixel by it (0 * inf =
// NaN), which this one would not, so the caller runs that one. Same bits for any thread count.
bool direct_backward_pooled(float* dW, float* db, const float* dout, const float* x, const float* out,
                            const std::int32_t* argmax, i64 PP, const ConvGeometry& g);

// Bytes the direct path asks for (0 when it does not apply), for fastlayers.profile: per
// thread the padded image, the flat outputs (or, pooling in the registers, the pooled values
// and argmax of an image) and the patches and masked dout of the pooled backward; on the
// calling thread the prepared filters or the dW and db partials. fused: 0 the convolution
// alone, 1 with ReLU, 2 with ReLU and max pooling (pooled planes of pooled_plane pixels);
// registers: the forward pools in the registers (direct_pools_in_registers). Where the
// backward is direct too (fused 2, no dx) and the forward does not pool in the registers,
// the per-image output the fused forward pools is counted as well; otherwise the backward
// runs im2col, whose buffers are not counted here.
i64 direct_scratch_bytes(const ConvGeometry& g, int fused, i64 pooled_plane, i64 threads, bool dx, bool registers);

}  // namespace fl
