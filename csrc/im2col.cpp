// im2col and its adjoint col2im in the textbook's layout: one row per output pixel
// (n, oh, ow), one column per filter tap (c, i, j). conv2d.cpp does not use these: it builds
// the transposed, tiled layout it needs itself (see there).
#include <algorithm>

#include "conv.h"

namespace fl {

namespace {
// Elements written or read per thread before a second thread pays for its wake-up.
constexpr i64 kMinElementsPerThread = i64{1} << 15;

i64 min_items(i64 elements_per_item) {
    return std::max<i64>(1, kMinElementsPerThread / std::max<i64>(1, elements_per_item));
}
}  // namespace

// col (N*OH*OW, K), K = C*FH*FW:
//   col[(n*OH + oh)*OW + ow, (c*FH + i)*FW + j] = x[n, c, oh*s + i - pad, ow*s + j - pad]  (0 in the padding)
// One task per (n, oh): it owns the OW consecutive rows of col that it writes.
template <class T>
void im2col(T* col, const T* x, const ConvGeometry& g) {
    const i64 C = g.C, H = g.H, W = g.W, FH = g.FH, FW = g.FW, OH = g.OH, OW = g.OW;
    const i64 s = g.stride, pad = g.pad;
    const i64 K = C * FH * FW;
    if (K == 0) return;
    parallel_for(g.N * OH, [&](i64 r) {
        const i64 n = r / OH, oh = r % OH;
        T* rows = col + r * OW * K;            // (OW, K)
        const T* xn = x + n * C * H * W;       // (C, H, W)
        for (i64 c = 0; c < C; ++c) {
            for (i64 i = 0; i < FH; ++i) {
                const i64 ih = oh * s + i - pad;
                T* dst = rows + (c * FH + i) * FW;  // column block (c, i, 0..FW) of every row
                if (ih < 0 || ih >= H) {
                    for (i64 ow = 0; ow < OW; ++ow)
                        for (i64 j = 0; j < FW; ++j) dst[ow * K + j] = T(0);
                    continue;
                }
                const T* src = xn + (c * H + ih) * W;  // (W,)
                for (i64 ow = 0; ow < OW; ++ow) {
                    const i64 iw0 = ow * s - pad;
                    for (i64 j = 0; j < FW; ++j) {
                        const i64 iw = iw0 + j;
                        dst[ow * K + j] = iw >= 0 && iw < W ? src[iw] : T(0);
                    }
                }
            }
        }
    }, min_items(OW * K));
}

// dx[n, c, h, w] = sum over the (i, j, oh, ow) with oh*s + i - pad = h and ow*s + j - pad = w of
//                  col[(n*OH + oh)*OW + ow, (c*FH + i)*FW + j].
// One task per (n, c) plane, which it owns. Each pixel is summed over (i, j) in ascending
// order (for a fixed tap a pixel has at most one source), the oracle's order.
template <class T>
void col2im(T* dx, const T* col, const ConvGeometry& g) {
    const i64 C = g.C, H = g.H, W = g.W, FH = g.FH, FW = g.FW, OH = g.OH, OW = g.OW;
    const i64 s = g.stride, pad = g.pad;
    const i64 K = C * FH * FW;
    parallel_for(g.N * C, [&](i64 nc) {
        const i64 n = nc / C, c = nc % C;
        T* plane = dx + nc * H * W;  // (H, W)
        for (i64 k = 0; k < H * W; ++k) plane[k] = T(0);
        for (i64 i = 0; i < FH; ++i) {
            for (i64 j = 0; j < FW; ++j) {
                const T* src = col + (c * FH + i) * FW + j;  // column (c, i, j); rows step by K
                for (i64 oh = 0; oh < OH; ++oh) {
                    const i64 ih = oh * s + i - pad;
                    if (ih < 0 || ih >= H) continue;
                    T* dst = plane + ih * W;
                    const T* s_row = src + (n * OH + oh) * OW * K;
                    for (i64 ow = 0; ow < OW; ++ow) {
                        const i64 iw = ow * s + j - pad;
                        if (iw >= 0 && iw < W) dst[iw] += s_row[ow * K];
                    }
                }
            }
        }
    }, min_items(std::max(H * W, OH * OW * FH * FW)));
}

template void im2col<float>(float*, const float*, const ConvGeometry&);
template void im2col<double>(double*, const double*, const ConvGeometry&);
template void col2im<float>(float*, const float*, const ConvGeometry&);
template void col2im<double>(double*, const double*, const ConvGeometry&);

}  // namespace fl
