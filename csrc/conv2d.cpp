// 2-D convolution (cross-correlation) by im2col + GEMM, forward and backward, with the
// ReLU-fused variants.
//
// Layout. Per image n the im2col matrix is kept channel-major, col_n (K, P), K = C*FH*FW,
// P = OH*OW: row (c*FH + i)*FW + j, column oh*OW + ow. Then
//   out_n (FN, P) = W (FN, K) @ col_n (K, P)
// lands directly in NCHW (out_n is image n's (FN, OH, OW) block): no transpose pass, and
// the bias is written into out_n before a beta = 1 GEMM, so it costs no pass of its own.
//
// Blocking. col is never built for the whole batch (N*K*P elements: 1.3 GB for a 3x3 conv
// of 64 channels over 100 images of 56x56). Each image is cut into tiles of whole output
// rows (or of part of a row, for absurdly wide rows) so that a tile of col (K, t) plus a
// (FN, t) tile of masked dout fits kScratchBytes; at the networks' shapes one tile is the
// whole image. Each thread keeps its own scratch across calls. Tiles depend on the shapes
// only.
//
// Parallelism. Every GEMM is called from inside our parallel loops, where the BLAS seam runs
// it on the calling thread (OpenBLAS itself is single-threaded, see threading.cpp), and the
// threads share out work that is fixed by the shapes: with N >= 2 the images (forward) or fixed
// groups of images (backward), each processed start to finish by one thread; a lone image
// is cut into blocks instead (columns of out, or input channels in the backward) that run
// in parallel. One parallel region per call (per tile for a lone image) is all the
// synchronisation there is: on this 2-core machine that measured ~2x faster than chunks of
// images with multi-threaded GEMMs, whose per-image GEMMs (FN = 16..64 rows) OpenBLAS
// splits poorly.
//
// Reproducibility. Every element of out and dx is computed by one thread in an order fixed
// by the shapes. dW and db are sums over images: each of G fixed image groups (G from the
// shapes, never the thread count) accumulates its own partial, and the partials are added in
// group order. So results are bit-identical for any thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "blas.h"
#include "conv.h"
#include "conv_direct.h"
#include "conv_pooled.h"
#include "isa_dispatch.h"
#include "pool.h"
#include "vecmath.h"
#include "winograd.h"

#ifdef FL_AVX512_DISPATCH
#include <immintrin.h>
#endif

namespace fl {

namespace {

// Per-thread scratch: a tile of col (K, t) and of masked dout (FN, t); separately, the
// padded input rows one im2col task reads. 1 MiB is this machine's L2 per core, so a tile
// written by im2col is still in cache when the GEMM packs it.
constexpr i64 kScratchBytes = i64{1} << 20;
// At most this many image groups carry dW / db partials, and the dW partials together
// stay under kPartialBytes (a huge W gets fewer groups, down to one).
constexpr i64 kMaxGroups = 8;
constexpr i64 kPartialBytes = i64{32} << 20;
// Elements a copy pass gives a thread before a second one is worth waking (GEMM work counts
// multiply-adds instead: min_items_macs, conv.h).
constexpr i64 kMinElementsPerThread = i64{1} << 14;

i64 min_items(i64 elements_per_item) {
    return std::max<i64>(1, kMinElementsPerThread / std::max<i64>(1, elements_per_item));
}

// This thread's scratch for slot Slot, kept across calls when within kScratchBytes (a
// one-pixel tile of a huge filter gets a buffer of its own, freed afterwards).
struct ConvScratch;
template <class T, int Slot>
class Scratch {
public:
    explicit Scratch(i64 n) {
        const i64 bytes = checked_mul(n, static_cast<i64>(sizeof(T)), "convolution scratch bytes");
        if (bytes > kScratchBytes) {
            own_.resize(static_cast<size_t>(n));
            ptr_ = own_.data();
        } else {
            ptr_ = kept_buffer<T, ConvScratch, Slot>(n);
        }
    }
    T* get() const { return ptr_; }

private:
    std::vector<T> own_;
    T* ptr_ = nullptr;
};

struct Plan {
    i64 K, P;     // rows of col, output pixels per image
    i64 tile;     // output pixels per tile (the last tile of an image may be shorter)
    bool direct;  // 1x1, stride 1, no padding: col_n is x_n (C, H*W) itself
};

Plan plan(const ConvGeometry& g, i64 elem_bytes) {
    Plan pl{};
    pl.K = checked_mul(checked_mul(g.C, g.FH, "C*FH"), g.FW, "C*FH*FW");
    pl.P = checked_mul(g.OH, g.OW, "OH*OW");
    pl.direct = g.FH == 1 && g.FW == 1 && g.stride == 1 && g.pad == 0;
    // Scratch per output pixel: a column of col (K) and one of masked dout (FN).
    const i64 per_pixel = std::max<i64>(1, pl.K + g.FN);
    const i64 L = std::max<i64>(1, kScratchBytes / elem_bytes / per_pixel);
    if (pl.P <= L) {
        pl.tile = pl.P;
    } else if (g.OW <= L) {
        // Tiles of whole output rows, as even as possible.
        const i64 rows = L / g.OW, tiles = (g.OH + rows - 1) / rows;
        pl.tile = (g.OH + tiles - 1) / tiles * g.OW;
    } else {
        const i64 tiles = (pl.P + L - 1) / L;
        pl.tile = (pl.P + tiles - 1) / tiles;
    }
    return pl;
}

// Walks the pixels [p0, p0 + t) of one col row (tap i, j of one input plane) run by run,
// a run being the part of one output row inside the tile: run(q, n, row, ow0, off, lo, hi)
// covers col entries [q, q + n); entry q + k reads plane[row + (ow0 + k)*s + off] for k in
// [lo, hi) and is padding otherwise (all of it when row = -1: the input row ih lies in the
// padding; else row = ih*W).
template <class Run>
inline void for_each_run(const ConvGeometry& g, i64 i, i64 j, i64 p0, i64 t, Run run) {
    const i64 H = g.H, W = g.W, OW = g.OW, s = g.stride, pad = g.pad, off = j - pad;
    // k in [lo, hi) <=> 0 <= (ow0 + k)*s + off < W, i.e. ceil(-off/s) <= ow0 + k < ceil((W - off)/s)
    // (ceil(a/s) for a > 0 written as (a - 1)/s + 1, which cannot overflow for any stride)
    const i64 first = off >= 0 ? 0 : (-off - 1) / s + 1;
    const i64 end = W - off <= 0 ? 0 : (W - off - 1) / s + 1;
    i64 oh = p0 / OW, ow0 = p0 % OW;  // advanced run by run: no division per run
    for (i64 q = 0; q < t;) {
        const i64 n = std::min(OW - ow0, t - q);
        const i64 ih = oh * s + i - pad;
        const i64 lo = std::clamp<i64>(first - ow0, 0, n), hi = std::clamp<i64>(end - ow0, lo, n);
        run(q, n, ih >= 0 && ih < H ? ih * W : i64{-1}, ow0, off, lo, hi);
        q += n;
        ow0 += n;
        if (ow0 == OW) {
            ow0 = 0;
            ++oh;
        }
    }
}

// A tile of whole output rows [oh0, oh0 + rows) reads padded input rows [oh0*s, oh0*s + R),
// R = (rows - 1)*s + FH, each Wp = W + 2*pad wide. Returns R, or 0 when the tile is not
// whole rows or those rows would not fit the scratch (it then tests bounds run by run).
i64 padded_rows(const ConvGeometry& g, i64 p0, i64 t, i64 elem_bytes) {
    if (p0 % g.OW != 0 || t % g.OW != 0) return 0;
    const i64 R = (t / g.OW - 1) * g.stride + g.FH;
    const double bytes = double(R) * double(g.W + 2 * g.pad) * double(elem_bytes);
    return bytes <= double(kScratchBytes) ? R : 0;
}

// buf (R, Wp) = padded rows [r0, r0 + R) of plane (H, W): zero outside the plane.
template <class T>
void pad_rows(T* buf, const T* plane, const ConvGeometry& g, i64 r0, i64 R) {
    const i64 H = g.H, W = g.W, pad = g.pad, Wp = W + 2 * pad;
    for (i64 r = 0; r < R; ++r) {
        T* b = buf + r * Wp;
        const i64 ih = r0 + r - pad;
        if (ih < 0 || ih >= H) {
            std::fill(b, b + Wp, T(0));
            continue;
        }
        std::fill(b, b + pad, T(0));
        std::copy(plane + ih * W, plane + (ih + 1) * W, b + pad);
        std::fill(b + pad + W, b + Wp, T(0));
    }
}

#ifdef FL_AVX512_DISPATCH
// d[0..n) = s[0..n) and d[0..n) += s[0..n) in 64-byte steps, the last one masked.
template <class T>
FL_TARGET_AVX512 inline void row_copy_avx512(T* d, const T* s, i64 n) {
    constexpr i64 L = 64 / sizeof(T);
    for (i64 k = 0; k < n; k += L) {
        const i64 m = std::min(L, n - k);
        if constexpr (std::is_same_v<T, float>) {
            const __mmask16 mask = static_cast<__mmask16>((1u << m) - 1u);
            _mm512_mask_storeu_ps(d + k, mask, _mm512_maskz_loadu_ps(mask, s + k));
        } else {
            const __mmask8 mask = static_cast<__mmask8>((1u << m) - 1u);
            _mm512_mask_storeu_pd(d + k, mask, _mm512_maskz_loadu_pd(mask, s + k));
        }
    }
}

template <class T>
FL_TARGET_AVX512 inline void row_add_avx512(T* d, const T* s, i64 n) {
    constexpr i64 L = 64 / sizeof(T);
    for (i64 k = 0; k < n; k += L) {
        const i64 m = std::min(L, n - k);
        if constexpr (std::is_same_v<T, float>) {
            const __mmask16 mask = static_cast<__mmask16>((1u << m) - 1u);
            const __m512 sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d + k), _mm512_maskz_loadu_ps(mask, s + k));
            _mm512_mask_storeu_ps(d + k, mask, sum);
        } else {
            const __mmask8 mask = static_cast<__mmask8>((1u << m) - 1u);
            const __m512d sum = _mm512_add_pd(_mm512_maskz_loadu_pd(mask, d + k), _mm512_maskz_loadu_pd(mask, s + k));
            _mm512_mask_storeu_pd(d + k, mask, sum);
        }
    }
}
#endif

// col (K, t) = columns [p0, p0 + t) of image xn's (C, H, W) col_n, for the input channels
// [c0, c1) (col rows c0*FH*FW .. c1*FH*FW). One task per channel, parallel unless already
// inside a parallel region. A tile of whole output rows first copies the input rows it reads
// into a padded buffer, so each col row is plain (strided) copies without bounds tests.
//
// im2col_channel is one channel c of it. Pure copies, so the AVX-512 build gives the same
// bits as the baseline; the row copies are most of the time im2col takes, and a row (OW = 8
// to 28 at the networks' shapes) is one or two masked 64-byte moves there instead of a
// vector loop with a scalar tail.
template <class T, bool Wide>
FL_ALWAYS_INLINE void im2col_channel(T* col, const T* xn, const ConvGeometry& g, i64 p0, i64 t, i64 c, i64 R) {
    const i64 FH = g.FH, FW = g.FW, OW = g.OW, s = g.stride, HW = g.H * g.W, Wp = g.W + 2 * g.pad;
    const T* plane = xn + c * HW;  // (H, W)
    if (R > 0) {
        Scratch<T, 1> scratch(R * Wp);
        T* buf = scratch.get();  // (R, Wp)
        pad_rows(buf, plane, g, p0 / OW * s, R);
        const i64 rows = t / OW;
        for (i64 i = 0; i < FH; ++i) {
            for (i64 j = 0; j < FW; ++j) {
                T* dst = col + ((c * FH + i) * FW + j) * t;  // (rows, OW)
                for (i64 r = 0; r < rows; ++r) {
                    const T* src = buf + (r * s + i) * Wp + j;
                    T* d = dst + r * OW;
                    if (s == 1) {
#ifdef FL_AVX512_DISPATCH
                        if constexpr (Wide) {
                            row_copy_avx512(d, src, OW);
                            continue;
                        }
#endif
                        for (i64 k = 0; k < OW; ++k) d[k] = src[k];
                    } else {
                        for (i64 k = 0; k < OW; ++k) d[k] = src[k * s];
                    }
                }
            }
        }
        return;
    }
    for (i64 i = 0; i < FH; ++i) {
        for (i64 j = 0; j < FW; ++j) {
            T* dst = col + ((c * FH + i) * FW + j) * t;  // (t,)
            for_each_run(g, i, j, p0, t, [&](i64 q, i64 n, i64 row, i64 ow0, i64 off, i64 lo, i64 hi) {
                T* d = dst + q;
                if (row < 0) {
                    for (i64 k = 0; k < n; ++k) d[k] = T(0);
                    return;
                }
                const T* r = plane + row;  // r[(ow0 + k)*s + off] is in range for k in [lo, hi)
                for (i64 k = 0; k < lo; ++k) d[k] = T(0);
                for (i64 k = lo; k < hi; ++k) d[k] = r[(ow0 + k) * s + off];
                for (i64 k = hi; k < n; ++k) d[k] = T(0);
            });
        }
    }
}

#ifdef FL_AVX512_DISPATCH
template <class T>
FL_TARGET_AVX512 void im2col_channel_avx512(T* col, const T* xn, const ConvGeometry& g, i64 p0, i64 t, i64 c, i64 R) {
    im2col_channel<T, true>(col, xn, g, p0, t, c, R);
}
#endif

template <class T>
void im2col_channel_base(T* col, const T* xn, const ConvGeometry& g, i64 p0, i64 t, i64 c, i64 R) {
    im2col_channel<T, false>(col, xn, g, p0, t, c, R);
}

template <class T>
void im2col_tile(T* col, const T* xn, const ConvGeometry& g, i64 p0, i64 t, i64 c0, i64 c1) {
    const i64 R = padded_rows(g, p0, t, sizeof(T));
    auto channel = im2col_channel_base<T>;
#ifdef FL_AVX512_DISPATCH
    if (cpu_has_avx512()) channel = im2col_channel_avx512<T>;
#endif
    parallel_for(c1 - c0, [&](i64 task) { channel(col, xn, g, p0, t, c0 + task, R); }, min_items(g.FH * g.FW * t));
}

// The adjoint of im2col_tile: planes [c0, c1) of dxn (C, H, W) += col (K, t) scattered back
// to the source pixels (padding dropped); the tile at p0 = 0 first zeroes them. One task per
// channel, which owns its plane; the order in which a pixel sums its taps is fixed by the
// shapes. Whole-row tiles accumulate into a zeroed padded buffer without bounds tests, then
// add its interior to the plane.
// One channel c of col2im_tile. Each element is a sum of its taps in an order that does
// not depend on the vector width, so the AVX-512 build gives the same bits as the baseline.
template <class T, bool Wide>
FL_ALWAYS_INLINE void col2im_channel(T* dxn, const T* col, const ConvGeometry& g, i64 p0, i64 t, i64 c, i64 R) {
    const i64 H = g.H, W = g.W, FH = g.FH, FW = g.FW, OW = g.OW, s = g.stride, pad = g.pad;
    const i64 HW = H * W, Wp = W + 2 * pad;
    T* plane = dxn + c * HW;  // (H, W)
    if (p0 == 0) std::fill(plane, plane + HW, T(0));
    if (R > 0) {
        Scratch<T, 1> scratch(R * Wp);
        T* buf = scratch.get();  // (R, Wp)
        std::fill(buf, buf + R * Wp, T(0));
        const i64 rows = t / OW, r0 = p0 / OW * s;
        for (i64 i = 0; i < FH; ++i) {
            for (i64 j = 0; j < FW; ++j) {
                const T* src = col + ((c * FH + i) * FW + j) * t;  // (rows, OW)
                for (i64 r = 0; r < rows; ++r) {
                    T* b = buf + (r * s + i) * Wp + j;
                    const T* sq = src + r * OW;
                    if (s == 1) {
#ifdef FL_AVX512_DISPATCH
                        if constexpr (Wide) {
                            row_add_avx512(b, sq, OW);
                            continue;
                        }
#endif
                        for (i64 k = 0; k < OW; ++k) b[k] += sq[k];
                    } else {
                        for (i64 k = 0; k < OW; ++k) b[k * s] += sq[k];
                    }
                }
            }
        }
        for (i64 r = 0; r < R; ++r) {
            const i64 ih = r0 + r - pad;
            if (ih < 0 || ih >= H) continue;
            T* d = plane + ih * W;
            const T* b = buf + r * Wp + pad;
            for (i64 k = 0; k < W; ++k) d[k] += b[k];
        }
        return;
    }
    for (i64 i = 0; i < FH; ++i) {
        for (i64 j = 0; j < FW; ++j) {
            const T* src = col + ((c * FH + i) * FW + j) * t;  // (t,)
            for_each_run(g, i, j, p0, t, [&](i64 q, i64, i64 row, i64 ow0, i64 off, i64 lo, i64 hi) {
                if (row < 0) return;
                T* r = plane + row;
                const T* sq = src + q;
                for (i64 k = lo; k < hi; ++k) r[(ow0 + k) * s + off] += sq[k];
            });
        }
    }
}

#ifdef FL_AVX512_DISPATCH
template <class T>
FL_TARGET_AVX512 void col2im_channel_avx512(T* dxn, const T* col, const ConvGeometry& g, i64 p0, i64 t, i64 c, i64 R) {
    col2im_channel<T, true>(dxn, col, g, p0, t, c, R);
}
#endif

template <class T>
void col2im_channel_base(T* dxn, const T* col, const ConvGeometry& g, i64 p0, i64 t, i64 c, i64 R) {
    col2im_channel<T, false>(dxn, col, g, p0, t, c, R);
}

template <class T>
void col2im_tile(T* dxn, const T* col, const ConvGeometry& g, i64 p0, i64 t, i64 c0, i64 c1) {
    const i64 R = padded_rows(g, p0, t, sizeof(T));
    auto channel = col2im_channel_base<T>;
#ifdef FL_AVX512_DISPATCH
    if (cpu_has_avx512()) channel = col2im_channel_avx512<T>;
#endif
    parallel_for(c1 - c0, [&](i64 task) { channel(dxn, col, g, p0, t, c0 + task, R); }, min_items(g.FH * g.FW * t));
}

template <class T>
inline T relu(T v) {
    return v > T(0) || v != v ? v : T(0);
}

// Fixed (shape-only) split of [0, n) into `parts` ranges: part k is [n*k/parts, n*(k+1)/parts).
inline i64 part_begin(i64 n, i64 parts, i64 k) { return n * k / parts; }

// Blocks a lone image's work is split into, so that its GEMMs can run on several threads
// while each stays single-threaded: at most kImageBlocks, none under kMinBlock columns.
constexpr i64 kImageBlocks = 8;
constexpr i64 kMinBlock = 64;

// out_n (FN, P) = W (FN, K) @ col_n (K, P) + b, tile by tile: the tile of out is set to
// b, the GEMM adds onto it (beta = 1), then the ReLU runs on it while it is in cache. With
// `split` (a lone image) each tile's columns are cut into blocks that run in parallel.
template <class T, bool Relu>
void forward_image(T* outn, const T* xn, const T* W, const T* b, const ConvGeometry& g, const Plan& pl,
                   bool split) {
    const i64 K = pl.K, P = pl.P, FN = g.FN;
    Scratch<T, 0> scratch(pl.direct ? 0 : K * pl.tile);
    T* col = scratch.get();  // (K, tile)
    for (i64 p0 = 0; p0 < P; p0 += pl.tile) {
        const i64 t = std::min(pl.tile, P - p0);
        const T* B = xn + p0;  // (K, t) with leading dimension ldb
        i64 ldb = P;
        if (K > 0 && !pl.direct) {
            im2col_tile(col, xn, g, p0, t, 0, g.C);
            B = col;
            ldb = t;
        }
        const i64 blocks = split ? std::clamp<i64>(t / kMinBlock, 1, kImageBlocks) : 1;
        parallel_for(blocks, [&](i64 k) {
            const i64 q0 = part_begin(t, blocks, k), q1 = part_begin(t, blocks, k + 1);
            T* o = outn + p0 + q0;  // (FN, q1 - q0) with leading dimension P
            for (i64 f = 0; f < FN; ++f) std::fill(o + f * P, o + f * P + (q1 - q0), b[f]);
            if (K > 0) blas::gemm(false, false, FN, q1 - q0, K, T(1), W, K, B + q0, ldb, T(1), o, P);
            if (Relu)
                for (i64 f = 0; f < FN; ++f)
                    for (i64 q = 0; q < q1 - q0; ++q) o[f * P + q] = relu(o[f * P + q]);
        }, min_items_macs(double(FN) * double(K) * double(t) / double(blocks)));
    }
}

template <class T, bool Relu>
void forward(T* out, const T* x, const T* W, const T* b, const ConvGeometry& g) {
    const i64 N = g.N, FN = g.FN, CHW = g.C * g.H * g.W;
    if (N == 0 || FN == 0) return;
    if constexpr (std::is_same_v<T, float>) {
        if (direct_applies(g)) {
            direct_forward(out, x, W, b, Relu, g);
            return;
        }
        if (winograd_applies(g)) {
            const float* U = winograd_filters(W, FN, g.C, false);
            if (winograd_conv(out, x, U, b, Relu, N, g.C, g.H, g.W, FN, g.pad)) return;
            // A non-finite value: redone below with im2col (winograd.h).
        }
    }
    const Plan pl = plan(g, sizeof(T));
    if (N == 1) {
        forward_image<T, Relu>(out, x, W, b, g, pl, true);
        return;
    }
    parallel_for(N, [&](i64 n) {
        forward_image<T, Relu>(out + n * FN * pl.P, x + n * CHW, W, b, g, pl, false);
    }, min_items_macs(double(FN) * double(pl.K) * double(pl.P)));
}

// With y_n = W @ col_n + b and g_n = dL/dy_n (FN, P) (for the fused variant, dout_n where
// out_n > 0, else 0), for each tile of each image:
//   (1) dW (FN, K) += g (FN, t) @ col^T (t, K)
//   (2) db (FN,)   += sum over the tile of g        (in double until the end)
//   (3) dcol (K, t) = W^T @ g, then dx_n += col2im(dcol)   (dx skipped when null)
// For the 1x1 direct case col is x_n itself and dcol is dx_n's tile. With `split` (an image
// processed alone) (1) and (3) are cut by input channels, rows [c0*FH*FW, c1*FH*FW) of col:
// each block owns those columns of dW, rows of dcol and planes of dx, and the blocks run in
// parallel.
//
// dx as a convolution. For a stride-1 square filter with pad <= FH - 1, dx_n is the
// convolution of g_n, padded by FH - 1 - pad, with the filters flipped and transposed:
//   dx_n (C, H*W) = Wt (C, FN*FH*FW) @ im2col(g_n) (FN*FH*FW, H*W),
//   Wt[c, (f*FH + i)*FW + j] = W[f, c, FH-1-i, FW-1-j]
// (substitute i' = FH-1-i in dx[c,h,w] = sum_{f,i,j} W[f,c,i,j] g[f, h-i+pad, w-j+pad]).
// Its GEMM has an inner dimension of FN*FH*FW instead of (3)'s FN (16 to 64 here), which
// OpenBLAS runs far closer to its peak, and im2col's copies replace col2im's scattered adds.
// backward() passes Wt when every image qualifies (one tile per image, its im2col(g_n)
// within the scratch cap, not split); otherwise Wt is null and (3) runs.
inline ConvGeometry transposed_geometry(const ConvGeometry& g) {
    // g_n (FN, OH, OW) convolved back to (C, H, W): stride 1, pad FH - 1 - pad.
    return {1, g.FN, g.OH, g.OW, g.C, g.FH, g.FW, 1, g.FH - 1 - g.pad, g.H, g.W};
}

template <class T, bool Relu>
void backward_image(T* dxn, T* dW, double* db_acc, const T* doutn, const T* xn, const T* W, const T* outn,
                    const ConvGeometry& g, const Plan& pl, bool split, const T* Wt = nullptr) {
    const i64 K = pl.K, P = pl.P, FN = g.FN, C = g.C, taps = g.FH * g.FW;
    Scratch<T, 0> scratch((pl.direct ? 0 : K * pl.tile) + (Relu ? FN * pl.tile : 0));
    T* col = scratch.get();                           // (K, tile): col, then dcol
    T* gbuf = col + (pl.direct ? 0 : K * pl.tile);    // (FN, tile): masked dout
    const i64 blocks = split ? std::min(C, kImageBlocks) : 1;
    for (i64 p0 = 0; p0 < P; p0 += pl.tile) {
        const i64 t = std::min(pl.tile, P - p0);
        const T* gt = doutn + p0;  // (FN, t) with leading dimension ldg
        i64 ldg = P;
        if (Relu) {
            for (i64 f = 0; f < FN; ++f) vm::relu_mask(gbuf + f * t, outn + f * P + p0, doutn + f * P + p0, t);
            gt = gbuf;
            ldg = t;
        }
        // (2)
        for (i64 f = 0; f < FN; ++f) db_acc[f] += vm::sum_lanes(gt + f * ldg, t);
        if (K == 0) continue;
        const T* ct = xn + p0;  // (K, t) with leading dimension ldc
        i64 ldc = P;
        if (!pl.direct) {
            im2col_tile(col, xn, g, p0, t, 0, C);
            ct = col;
            ldc = t;
        }
        if (Wt) {
            // (1), then dx_n as a convolution (see above); t == P here, so gt is all of g_n.
            blas::gemm(false, true, FN, K, t, T(1), gt, ldg, ct, ldc, T(1), dW, K);
            const ConvGeometry gt_geo = transposed_geometry(g);
            const i64 K2 = FN * taps, HW = g.H * g.W;
            Scratch<T, 4> scratch2(K2 * HW);
            T* col2 = scratch2.get();  // (FN*FH*FW, H*W)
            im2col_tile(col2, gt, gt_geo, 0, HW, 0, FN);
            blas::gemm(false, false, C, HW, K2, T(1), Wt, K2, col2, HW, T(0), dxn, HW);
            continue;
        }
        parallel_for(blocks, [&](i64 k) {
            const i64 c0 = part_begin(C, blocks, k), c1 = part_begin(C, blocks, k + 1);
            const i64 r0 = c0 * taps, rows = (c1 - c0) * taps;
            // (1)
            blas::gemm(false, true, FN, rows, t, T(1), gt, ldg, ct + r0 * ldc, ldc, T(1), dW + r0, K);
            // (3)
            if (!dxn) return;
            if (pl.direct) {
                blas::gemm(true, false, rows, t, FN, T(1), W + r0, K, gt, ldg, T(0), dxn + r0 * P + p0, P);
            } else {
                blas::gemm(true, false, rows, t, FN, T(1), W + r0, K, gt, ldg, T(0), col + r0 * t, t);
                col2im_tile(dxn, col, g, p0, t, c0, c1);
            }
        }, min_items_macs(double(FN) * double(K) * double(t) * 2.0 / double(blocks)));
    }
}

// Runs image(n, dW_acc, db_acc, split) for every image n, each adding its dW and db terms
// into the accumulators it is given, and reduces them into dW and db; image n also writes
// dx's block n. See backward() for the grouping.
template <class T, class Image>
void backward_images(T* dx, T* dW, T* db, const ConvGeometry& g, const Plan& pl, Image image) {
    const i64 N = g.N, FN = g.FN, CHW = g.C * g.H * g.W;
    if (N == 0) return;
    if (FN == 0) {
        // Nothing flows back: dx = W^T @ (an empty dout) = 0.
        if (dx) std::memset(dx, 0, static_cast<size_t>(N * CHW) * sizeof(T));
        return;
    }
    const i64 P = pl.P, FNK = FN * pl.K;  // FNK is W's size, so it fits
    std::vector<double> db_acc(static_cast<size_t>(FN), 0.0);
    i64 G = std::min(N, kMaxGroups);
    const double partial_bytes = double(FNK) * double(sizeof(T));
    if (partial_bytes > 0) G = std::max<i64>(1, std::min<i64>(G, static_cast<i64>(kPartialBytes / partial_bytes)));
    if (G == 1) {
        // One image, or a W too large for partials: images in order, straight into dW,
        // each split by input channels.
        for (i64 n = 0; n < N; ++n) image(n, dW, db_acc.data(), true);
    } else {
        std::vector<T> dW_part(static_cast<size_t>(G * FNK), T(0));
        std::vector<double> db_part(static_cast<size_t>(G * FN), 0.0);
        const double macs_per_group = double(FNK) * double(P) * (dx ? 2.0 : 1.0) * double(N) / double(G);
        parallel_for(G, [&](i64 gi) {
            for (i64 n = part_begin(N, G, gi); n < part_begin(N, G, gi + 1); ++n)
                image(n, dW_part.data() + gi * FNK, db_part.data() + gi * FN, false);
        }, min_items_macs(macs_per_group));
        parallel_chunks(FNK, [&](i64 k0, i64 k1) {
            for (i64 k = k0; k < k1; ++k) {
                T acc = dW_part[k];
                for (i64 gi = 1; gi < G; ++gi) acc += dW_part[gi * FNK + k];
                dW[k] += acc;
            }
        });
        for (i64 f = 0; f < FN; ++f)
            for (i64 gi = 0; gi < G; ++gi) db_acc[f] += db_part[gi * FN + f];
    }
    for (i64 f = 0; f < FN; ++f) db[f] += static_cast<T>(db_acc[f]);
}

// Wt for computing dx as a convolution (see backward_image), or empty where that does not
// apply: no dx wanted, a 1x1 direct or strided or non-square convolution, a pad beyond
// FH - 1, images cut into several tiles, or an im2col(g_n) over the scratch cap.
template <class T>
std::vector<T> transposed_filters(const T* W, const ConvGeometry& g, const Plan& pl, bool dx) {
    const i64 C = g.C, FN = g.FN, FH = g.FH, FW = g.FW, K2 = FN * FH * FW;
    if (!dx || pl.direct || pl.K == 0 || g.stride != 1 || FH != FW || g.pad > FH - 1 || pl.tile != pl.P) return {};
    if (double(K2) * double(g.H) * double(g.W) * double(sizeof(T)) > double(kScratchBytes)) return {};
    std::vector<T> Wt(static_cast<size_t>(C * K2));  // (C, FN*FH*FW); W's size
    bool finite = true;
    for (i64 c = 0; c < C; ++c)
        for (i64 f = 0; f < FN; ++f)
            for (i64 i = 0; i < FH; ++i)
                for (i64 j = 0; j < FW; ++j) {
                    const T w = W[((f * C + c) * FH + (FH - 1 - i)) * FW + (FW - 1 - j)];
                    finite &= std::isfinite(w);
                    Wt[c * K2 + (f * FH + i) * FW + j] = w;
                }
    // The convolution form also multiplies the padding of g by every tap, which an infinite
    // or NaN weight turns into NaN at inputs that tap never reaches; (3) touches only the
    // terms of the gradient itself, as the oracle does.
    if (!finite) return {};
    return Wt;
}

// The whole batch's convolution output gradient, for the Winograd backward with a fused ReLU
// or pooling: kept on the calling thread across calls, like the scratch above.
struct ConvBatch;
float* batch_buffer(i64 n) { return kept_buffer<float, ConvBatch>(n); }

// The Winograd backward (winograd.h) of a convolution whose output gradient is gfull
// (N, FN, OH, OW): dW and db accumulated, dx (when non-null) overwritten. All or nothing:
// when a result is not finite it returns false with dW and db untouched, for the caller to
// redo the whole backward with im2col.
bool winograd_backward(float* dx, float* dW, float* db, const float* gfull, const float* x, const float* W,
                       const ConvGeometry& g, const double* plane_sums = nullptr) {
    // dx (N, C, H, W) or null; dW (FN, C, 3, 3), db (FN,) +=; gfull (N, FN, OH, OW); x (N, C, H, W);
    // plane_sums (N, FN) or null: sum_lanes of each plane of gfull, taken by a caller that had
    // the plane in cache anyway (the ReLU mask), so db need not read gfull again
    const i64 N = g.N, FN = g.FN, P = g.OH * g.OW, FNK = FN * g.C * 9;
    std::vector<float> dWc(static_cast<size_t>(FNK));
    if (!winograd_dW(dWc.data(), gfull, x, g)) return false;
    if (dx) {
        // dx is dY convolved with the flipped, transposed filters, padded by 2 - pad.
        const float* Ut = winograd_filters(W, FN, g.C, true);
        if (!winograd_conv(dx, gfull, Ut, nullptr, false, N, FN, g.OH, g.OW, g.C, 2 - g.pad)) return false;
    }
    for (i64 k = 0; k < FNK; ++k) dW[k] += dWc[static_cast<size_t>(k)];
    // db: each filter's sum over images then pixels, in double, one thread per filter.
    if (plane_sums) {
        for (i64 f = 0; f < FN; ++f) {
            double s = 0.0;
            for (i64 n = 0; n < N; ++n) s += plane_sums[n * FN + f];
            db[f] += static_cast<float>(s);
        }
        return true;
    }
    parallel_for(FN, [&](i64 f) {
        double s = 0.0;
        for (i64 n = 0; n < N; ++n) s += vm::sum_lanes(gfull + (n * FN + f) * P, P);
        db[f] += static_cast<float>(s);
    }, min_items(N * P));
    return true;
}

template <class T, bool Relu>
void backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, const T* out, const ConvGeometry& g) {
    if constexpr (std::is_same_v<T, float>) {
        if (winograd_applies(g)) {
            const T* gfull = dout;
            std::vector<double> sums;
            if (Relu) {
                // The masked gradient plane by plane, each plane's bias-gradient sum taken while
                // it is in cache.
                const i64 planes = checked_mul(g.N, g.FN, "N*FN"), P = g.OH * g.OW;
                T* masked = batch_buffer(checked_mul(planes, P, "N*FN*OH*OW"));
                sums.resize(static_cast<size_t>(planes));
                parallel_for(planes, [&](i64 k) {
                    vm::relu_mask(masked + k * P, out + k * P, dout + k * P, P);
                    sums[static_cast<size_t>(k)] = vm::sum_lanes(masked + k * P, P);
                }, min_items(P));
                gfull = masked;
            }
            if (winograd_backward(dx, dW, db, gfull, x, W, g, sums.empty() ? nullptr : sums.data())) return;
        }
    }
    const Plan pl = plan(g, sizeof(T));
    const i64 FNP = g.FN * pl.P, CHW = g.C * g.H * g.W;  // dout's and x's blocks per image
    const std::vector<T> Wt = transposed_filters(W, g, pl, dx != nullptr);
    backward_images(dx, dW, db, g, pl, [&](i64 n, T* dWg, double* dbg, bool split) {
        backward_image<T, Relu>(dx ? dx + n * CHW : nullptr, dWg, dbg, dout + n * FNP, x + n * CHW, W,
                                Relu ? out + n * FNP : nullptr, g, pl, split,
                                split || Wt.empty() ? nullptr : Wt.data());
    });
}

}  // namespace

// Convolution, ReLU and max pooling as one kernel, image by image: the convolution's output
// for an image, y_n (FN, OH, OW), lives only in a per-thread buffer while it is pooled, so the
// (N, FN, OH, OW) activation the unfused layers write, read back, and write again as the
// pooling's gradient never reaches memory (simple_cnn: 6.9 MB three times per step).
// Each image makes exactly the calls conv2d_relu_forward and maxpool2d_forward make (the
// same tiles, GEMM shapes and pooling loops), so the results equal the unfused pair's bits.
template <class T>
void conv2d_relu_maxpool2d_forward(T* out, std::int32_t* argmax, const T* x, const T* W, const T* b,
                                   const ConvGeometry& g, const PoolGeometry& pg) {
    // out, argmax (N, FN, POH, POW); x (N, C, H, W); W (FN, C, FH, FW); b (FN,)
    const i64 N = g.N, FN = g.FN, CHW = g.C * g.H * g.W;
    if (N == 0 || FN == 0) return;
    const Plan pl = plan(g, sizeof(T));
    const i64 FNP = checked_mul(FN, pl.P, "FN*OH*OW"), FNPP = FN * pg.OH * pg.OW;
    PoolGeometry one = pg;  // the pooling of one image's y_n
    one.N = 1;
    if constexpr (std::is_same_v<T, float>) {
        if (direct_forward_pooled(out, argmax, x, W, b, g, pg)) return;
        if (direct_applies(g)) {
            const DirectFilters d = direct_filters(W, b, g);
            parallel_for(N, [&](i64 n) {
                Scratch<T, 2> scratch(FNP);
                T* y = scratch.get();  // (FN, OH, OW)
                direct_forward_image(y, x + n * CHW, d, true, g);
                maxpool2d_forward(out + n * FNPP, argmax + n * FNPP, y, one);
            }, direct_min_images(g));
            return;
        }
        if (winograd_applies(g)) {
            const float* U = winograd_filters(W, FN, g.C, false);
            if (winograd_conv(out, x, U, b, true, N, g.C, g.H, g.W, FN, g.pad, &pg, argmax)) return;
        }
    }
    if (N == 1) {
        std::vector<T> y(static_cast<size_t>(FNP));
        forward_image<T, true>(y.data(), x, W, b, g, pl, true);
        maxpool2d_forward(out, argmax, y.data(), one);
        return;
    }
    parallel_for(N, [&](i64 n) {
        Scratch<T, 2> scratch(FNP);
        T* y = scratch.get();  // (FN, OH, OW)
        forward_image<T, true>(y, x + n * CHW, W, b, g, pl, false);
        maxpool2d_forward(out + n * FNPP, argmax + n * FNPP, y, one);  // serial: already in a parallel loop
    }, min_items_macs(double(FN) * double(pl.K) * double(pl.P)));
}

// Backward: dout (N, FN, POH, POW) is routed to each window's argmax in a per-thread buffer
// g_n (FN, OH, OW), as maxpool2d_backward does (zeros, then += in output order), each entry
// kept only where the pooled out > 0: the chosen y_n element is out itself, and ReLU passes
// gradient where it is > 0. Then g_n goes through the convolution's backward exactly as
// conv2d_relu_backward's masked dout does.
template <class T>
void conv2d_relu_maxpool2d_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, const T* out,
                                    const std::int32_t* argmax, i64 POH, i64 POW, const ConvGeometry& g) {
    // dx (N, C, H, W) or null; dW (FN, C, FH, FW), db (FN,) accumulated;
    // dout, out, argmax (N, FN, POH, POW); argmax indexes the (OH, OW) planes of y
    const Plan pl = plan(g, sizeof(T));
    const i64 FN = g.FN, P = pl.P, PP = POH * POW, CHW = g.C * g.H * g.W;
    const i64 FNP = checked_mul(FN, P, "FN*OH*OW");
    // gn (FN, OH*OW) = image n's gradient of y: dout routed to each window's argmax, kept
    // where out > 0. Every window that chose an element saw the same value there (out is that
    // element), so masking each contribution masks the sum. The mask is a vectorised select
    // of its own: inside the scatter loop GCC compiles it to a branch, which random signs
    // mispredict half the time.
    auto route = [&](T* gn, i64 n) {
        Scratch<T, 3> masked_scratch(FN * PP);
        T* masked = masked_scratch.get();  // (FN, POH*POW): dout where out > 0
        vm::relu_mask(masked, out + n * FN * PP, dout + n * FN * PP, FN * PP);
        std::fill(gn, gn + FNP, T(0));
        for (i64 f = 0; f < FN; ++f) {
            T* plane = gn + f * P;
            const T* m = masked + f * PP;
            const std::int32_t* am = argmax + (n * FN + f) * PP;
            for (i64 q = 0; q < PP; ++q) plane[am[q]] += m[q];
        }
    };
    if constexpr (std::is_same_v<T, float>) {
        if (!dx && direct_pooled_applies(g) && direct_backward_pooled(dW, db, dout, x, out, argmax, PP, g)) return;
        if (pooled_backward_applies(g, PP) && pooled_backward(dx, dW, db, dout, x, W, out, argmax, PP, g)) return;
        if (winograd_applies(g)) {
            T* gfull = batch_buffer(checked_mul(g.N, FNP, "N*FN*OH*OW"));
            parallel_for(g.N, [&](i64 n) { route(gfull + n * FNP, n); }, min_items(FNP));
            if (winograd_backward(dx, dW, db, gfull, x, W, g)) return;
        }
    }
    const std::vector<T> Wt = transposed_filters(W, g, pl, dx != nullptr);
    backward_images(dx, dW, db, g, pl, [&](i64 n, T* dWg, double* dbg, bool split) {
        Scratch<T, 2> scratch(FNP);
        T* gn = scratch.get();  // (FN, OH*OW)
        route(gn, n);
        backward_image<T, false>(dx ? dx + n * CHW : nullptr, dWg, dbg, gn, x + n * CHW, W, nullptr, g, pl, split,
                                 split || Wt.empty() ? nullptr : Wt.data());
    });
}

namespace {
std::atomic<int> g_algorithm{kConvAuto};
}  // namespace

void set_conv_algorithm(int algorithm) {
    if (algorithm < kConvAuto || algorithm > kConvDirect) throw std::invalid_argument("unknown convolution algorithm");
    g_algorithm.store(algorithm, std::memory_order_relaxed);
}

int conv_algorithm() { return g_algorithm.load(std::memory_order_relaxed); }

template <class T>
void conv2d_forward(T* out, const T* x, const T* W, const T* b, const ConvGeometry& g) {
    forward<T, false>(out, x, W, b, g);
}

template <class T>
void conv2d_relu_forward(T* out, const T* x, const T* W, const T* b, const ConvGeometry& g) {
    forward<T, true>(out, x, W, b, g);
}

template <class T>
void conv2d_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, const ConvGeometry& g) {
    backward<T, false>(dx, dW, db, dout, x, W, nullptr, g);
}

template <class T>
void conv2d_relu_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, const T* out,
                          const ConvGeometry& g) {
    backward<T, true>(dx, dW, db, dout, x, W, out, g);
}

template void conv2d_forward<float>(float*, const float*, const float*, const float*, const ConvGeometry&);
template void conv2d_forward<double>(double*, const double*, const double*, const double*, const ConvGeometry&);
template void conv2d_relu_forward<float>(float*, const float*, const float*, const float*, const ConvGeometry&);
template void conv2d_relu_forward<double>(double*, const double*, const double*, const double*,
                                          const ConvGeometry&);
template void conv2d_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                     const ConvGeometry&);
template void conv2d_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                      const ConvGeometry&);
template void conv2d_relu_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                          const float*, const ConvGeometry&);
template void conv2d_relu_backward<double>(double*, double*, double*, const double*, const double*,
                                           const double*, const double*, const ConvGeometry&);

template void conv2d_relu_maxpool2d_forward<float>(float*, std::int32_t*, const float*, const float*, const float*,
                                                  const ConvGeometry&, const PoolGeometry&);
template void conv2d_relu_maxpool2d_forward<double>(double*, std::int32_t*, const double*, const double*,
                                                   const double*, const ConvGeometry&, const PoolGeometry&);
template void conv2d_relu_maxpool2d_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                                   const float*, const std::int32_t*, i64, i64, const ConvGeometry&);
template void conv2d_relu_maxpool2d_backward<double>(double*, double*, double*, const double*, const double*,
                                                    const double*, const double*, const std::int32_t*, i64, i64,
                                                    const ConvGeometry&);

}  // namespace fl
