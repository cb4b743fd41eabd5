// Affine warp of NCHW images with bilinear interpolation (data augmentation).
//
// Output pixel (row oy, column ox) samples the input at
//   sx = (t0*ox + t1*oy) + t2,  sy = (t3*ox + t4*oy) + t5
// (pixel centres at integer coordinates, x = column), between its four neighbours, with
// `fill` outside the image. Every operation is the oracle's (fastlayers/reference/warp.py),
// in double and in its order, and this file is compiled without FMA contraction, so the two
// agree bit for bit; each output is written by one thread, so any thread count gives the
// same bits.
//
// The loop is a gather (four data-dependent loads per pixel) and stays scalar: the baseline
// x86-64 build has no gather instruction. The coordinates and weights of a pixel are
// computed once and used for all C channels.
#include <algorithm>
#include <limits>

#include "kernels.h"

namespace fl {

namespace {

// floor(v) for |v| well inside int64, without a libm call (baseline x86-64 has no roundsd).
inline i64 floor_i64(double v) {
    const i64 t = static_cast<i64>(v);
    return static_cast<double>(t) > v ? t - 1 : t;
}

template <class T>
void warp_row(T* out, const T* x, const T* theta, double fill, i64 C, i64 H, i64 W, i64 oy) {
    const double t0 = theta[0], t1 = theta[1], t2 = theta[2], t3 = theta[3], t4 = theta[4], t5 = theta[5];
    const double y = static_cast<double>(oy);
    const double t1y = t1 * y, t4y = t4 * y;
    const double Wd = static_cast<double>(W), Hd = static_cast<double>(H);
    const i64 plane = H * W;
    T* o = out + oy * W;  // (W,) of channel 0; channel c at o + c*plane
    for (i64 ox = 0; ox < W; ++ox) {
        const double xd = static_cast<double>(ox);
        const double sx = (t0 * xd + t1y) + t2;
        const double sy = (t3 * xd + t4y) + t5;
        if (sx != sx || sy != sy) {
            for (i64 c = 0; c < C; ++c) o[c * plane + ox] = std::numeric_limits<T>::quiet_NaN();
            continue;
        }
        // Outside (-1, W) x (-1, H) every tap of non-zero weight is outside the image.
        if (!(sx > -1.0 && sx < Wd && sy > -1.0 && sy < Hd)) {
            for (i64 c = 0; c < C; ++c) o[c * plane + ox] = static_cast<T>(fill);
            continue;
        }
        i64 x0 = floor_i64(sx), y0 = floor_i64(sy);
        double fx = sx - static_cast<double>(x0), fy = sy - static_cast<double>(y0);
        // sx - floor(sx) rounds up to 1 just below 0: that point is taken as 0 (as the oracle does).
        if (fx == 1.0) ++x0, fx = 0.0;
        if (fy == 1.0) ++y0, fy = 0.0;
        const double w00 = (1.0 - fy) * (1.0 - fx), w01 = (1.0 - fy) * fx;
        const double w10 = fy * (1.0 - fx), w11 = fy * fx;
        const bool cx0 = x0 >= 0, cx1 = x0 + 1 < W, ry0 = y0 >= 0, ry1 = y0 + 1 < H;
        const bool in00 = ry0 && cx0, in01 = ry0 && cx1, in10 = ry1 && cx0, in11 = ry1 && cx1;
        const i64 k = y0 * W + x0;  // only dereferenced through the in* flags
        for (i64 c = 0; c < C; ++c) {
            const T* p = x + c * plane;
            // Zero weights are skipped, not multiplied (see the oracle: exact shifts, no
            // NaN from an infinite neighbour at weight 0). w00 is never 0.
            double acc = w00 * (in00 ? static_cast<double>(p[k]) : fill);
            if (w01 != 0.0) acc += w01 * (in01 ? static_cast<double>(p[k + 1]) : fill);
            if (w10 != 0.0) acc += w10 * (in10 ? static_cast<double>(p[k + W]) : fill);
            if (w11 != 0.0) acc += w11 * (in11 ? static_cast<double>(p[k + W + 1]) : fill);
            o[c * plane + ox] = static_cast<T>(acc);
        }
    }
}

}  // namespace

template <class T>
void affine_warp_forward(T* out, const T* x, const T* theta, double fill, i64 N, i64 C, i64 H, i64 W) {
    // The fill of a pixel wholly outside the input is the value rounded to T; taps read it
    // as that rounded value too.
    const double f = static_cast<double>(static_cast<T>(fill));
    const i64 plane = H * W, image = C * plane;
    // One task per output row of one image (all its channels): enough tasks for any batch,
    // each worth a few microseconds at 28x28.
    const i64 min_rows = std::max<i64>(1, 2048 / std::max<i64>(W * C, 1));
    parallel_for(N * H, [&](i64 r) {
        const i64 n = r / H, oy = r % H;
        warp_row(out + n * image, x + n * image, theta + 6 * n, f, C, H, W, oy);
    }, min_rows);
}

template void affine_warp_forward<float>(float*, const float*, const float*, double, i64, i64, i64, i64);
template void affine_warp_forward<double>(double*, const double*, const double*, double, i64, i64, i64, i64);

}  // namespace fl
