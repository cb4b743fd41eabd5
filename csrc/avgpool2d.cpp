// Average pooling over NCHW planes; a window's mean counts its in-bounds elements only.
#include <algorithm>

#include "pool.h"

namespace fl {

namespace {

inline i64 min_planes(i64 per_plane) { return std::max<i64>(1, (i64{1} << 15) / std::max<i64>(per_plane, 1)); }

// The in-bounds rows [h0, h1) and columns [w0, w1) of window (oh, ow).
struct Window {
    i64 h0, h1, w0, w1;
    i64 count() const { return (h1 - h0) * (w1 - w0); }
};

inline Window window(const PoolGeometry& g, i64 oh, i64 ow) {
    const i64 hs = oh * g.stride - g.pad, ws = ow * g.stride - g.pad;
    return {std::max<i64>(hs, 0), std::min(hs + g.PH, g.H), std::max<i64>(ws, 0), std::min(ws + g.PW, g.W)};
}

// An empty window (only for an empty plane) has count 0 and gives 0/0 = NaN, as the
// oracle's division does.
template <class T>
void avgpool_plane(T* out, const T* x, const PoolGeometry& g) {
    for (i64 oh = 0; oh < g.OH; ++oh) {
        for (i64 ow = 0; ow < g.OW; ++ow) {
            const Window b = window(g, oh, ow);
            T s = T(0);
            for (i64 h = b.h0; h < b.h1; ++h)
                for (i64 w = b.w0; w < b.w1; ++w) s += x[h * g.W + w];
            out[oh * g.OW + ow] = s / static_cast<T>(b.count());
        }
    }
}

template <class T>
void avgpool_plane_2x2s2(T* out, const T* x, i64 W, i64 OH, i64 OW) {
    for (i64 oh = 0; oh < OH; ++oh) {
        const T* r0 = x + 2 * oh * W;  // (W,)
        const T* r1 = r0 + W;          // (W,)
        T* o = out + oh * OW;          // (OW,)
        for (i64 ow = 0; ow < OW; ++ow)
            o[ow] = (((r0[2 * ow] + r0[2 * ow + 1]) + r1[2 * ow]) + r1[2 * ow + 1]) * T(0.25);
    }
}

// dx (H,W) = 0, then each window's dout / count added to its in-bounds elements, windows in
// row-major order (one thread per plane: the order, hence the bits, are fixed).
template <class T>
void avgpool_plane_backward(T* dx, const T* dout, const PoolGeometry& g) {
    std::fill(dx, dx + g.H * g.W, T(0));
    for (i64 oh = 0; oh < g.OH; ++oh) {
        for (i64 ow = 0; ow < g.OW; ++ow) {
            const Window b = window(g, oh, ow);
            if (b.count() == 0) continue;
            const T share = dout[oh * g.OW + ow] / static_cast<T>(b.count());
            for (i64 h = b.h0; h < b.h1; ++h)
                for (i64 w = b.w0; w < b.w1; ++w) dx[h * g.W + w] += share;
        }
    }
}

// Non-overlapping 2x2 windows: every input element belongs to at most one window, so dx is
// gathered row by row (one write per element, no zero-fill pass). Rows and columns past the
// last full window (odd H or W) belong to none and get 0.
template <class T>
void avgpool_plane_backward_2x2s2(T* dx, const T* dout, i64 H, i64 W, i64 OH, i64 OW) {
    for (i64 h = 0; h < H; ++h) {
        T* d = dx + h * W;  // (W,)
        const i64 oh = h / 2;
        if (oh >= OH) {
            std::fill(d, d + W, T(0));
            continue;
        }
        const T* g = dout + oh * OW;  // (OW,)
        for (i64 w = 0; w < 2 * OW; ++w) d[w] = g[w / 2] * T(0.25);
        std::fill(d + 2 * OW, d + W, T(0));
    }
}

}  // namespace

template <class T>
void avgpool2d_forward(T* out, const T* x, const PoolGeometry& g) {
    const i64 in_plane = g.H * g.W, out_plane = g.OH * g.OW;
    const bool fast = g.PH == 2 && g.PW == 2 && g.stride == 2 && g.pad == 0;
    parallel_for(g.N * g.C, [&](i64 p) {
        T* o = out + p * out_plane;      // (OH,OW)
        const T* xp = x + p * in_plane;  // (H,W)
        if (fast)
            avgpool_plane_2x2s2(o, xp, g.W, g.OH, g.OW);
        else
            avgpool_plane(o, xp, g);
    }, min_planes(in_plane + out_plane));
}

// With out[o] = (1/count_o) * sum of the window's in-bounds x:
//   dx[h*W + w] = sum over windows o containing (h, w) of dout[o] / count_o
template <class T>
void avgpool2d_backward(T* dx, const T* dout, const PoolGeometry& g) {
    const i64 in_plane = g.H * g.W, out_plane = g.OH * g.OW;
    const bool fast = g.PH == 2 && g.PW == 2 && g.stride == 2 && g.pad == 0;
    parallel_for(g.N * g.C, [&](i64 p) {
        T* d = dx + p * in_plane;             // (H,W)
        const T* gp = dout + p * out_plane;   // (OH,OW)
        if (fast)
            avgpool_plane_backward_2x2s2(d, gp, g.H, g.W, g.OH, g.OW);
        else
            avgpool_plane_backward(d, gp, g);
    }, min_planes(in_plane + out_plane));
}

template void avgpool2d_forward<float>(float*, const float*, const PoolGeometry&);
template void avgpool2d_forward<double>(double*, const double*, const PoolGeometry&);
template void avgpool2d_backward<float>(float*, const float*, const PoolGeometry&);
template void avgpool2d_backward<double>(double*, const double*, const PoolGeometry&);

}  // namespace fl
