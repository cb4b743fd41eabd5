// Winograd F(4x4, 3x3) convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2016), forward, dx and dW, float32.
//
// Why. im2col + GEMM performs 9*Cin multiply-adds per output value; F(4x4, 3x3) computes a
// 4x4 output tile from a 6x6 input tile with 36 per (input, output) channel pair, 4x fewer.
// For one tile and channels c -> f:
//   Y (4,4) = A^T [ U (6,6) .* V (6,6) ] A,   U = G w (3,3) G^T,   V = B^T d (6,6) B
// with (points 0, 1, -1, 2, -2, infinity)
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//   G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
// Summing over input channels inside the transformed domain turns the products into 36
// independent GEMMs, one per point xi of the 6x6 tile, over all tiles T of a chunk of images:
//   M[xi] (T, Cout) = V[xi] (T, Cin) @ U[xi] (Cin, Cout)
// bench/winograd.py measured these GEMMs at 0.24x to 0.47x of the im2col GEMM's time for
// deep_cnn's layers with 32 and 64 channels, 0.67x to 0.72x with 16 (OpenBLAS runs an inner
// dimension of 16 poorly); the automatic choice (conv.h) follows the whole kernels'
// times (see winograd_applies()).
//
// Backward. Y is linear in U and in V, so with dY the gradient of a tile of output:
//   dM = A dY A^T (6,6),   dU[xi] (Cin, Cout) = sum over tiles of V[xi]^T dM[xi],
//   dW = G^T dU G (3,3) per channel pair
// (tile outputs beyond OH x OW get dY = 0, so overhanging tiles add nothing). dU's GEMMs
// have the tile count as inner dimension, which OpenBLAS runs at full speed. dx is the
// convolution of dY, padded by 2 - pad, with the filters flipped and transposed (see
// conv2d.cpp), so it is winograd_conv with winograd_filters(W, FN, C, true).
//
// Layout and blocking. Images are cut into fixed chunks (their number depends on the shapes
// only) of about kChunkBytes of V and M; a chunk's input planes are copied to a zero-padded
// channel-last buffer so that each transform is straight-line arithmetic over kLanes
// channels at once, which vectorises without gathers. Each chunk runs on one thread with
// single-threaded GEMMs (blas.h). dW sums one partial per chunk, in chunk order: results
// are the same for any thread count.
//
// Accuracy. The transforms multiply values by up to 8 (A^T) and 5 (B^T) and G has entries
// 1/6 and 1/24 that float32 cannot hold, so outputs carry more rounding than the direct
// sum: bench/winograd.py measured 2e-6 to 3e-6 of max|out| against 3e-7 for im2col at
// deep_cnn's shapes; tests/test_native_winograd.py bounds it.
#include "winograd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "blas.h"
#include "isa_dispatch.h"
#include "pool.h"
#include "transpose.h"
#include "vecmath.h"

namespace fl {

namespace {

constexpr i64 kTaps = 36;   // points of a transformed 6x6 tile, xi = 6*i + j
constexpr i64 kLanes = 16;  // channels transformed together: one AVX-512 vector of floats
// V and M of one chunk together; a chunk is at least one image.
constexpr i64 kChunkBytes = i64{2} << 20;
// Beyond this, one image's V and M would not stay in cache (or memory): im2col tiles instead.
constexpr double kMaxImageBytes = double(i64{64} << 20);
// The automatic choice: both channel counts at least this. With 16 and 16 (deep_cnn's
// conv2) Winograd measured 10-20% faster than im2col forward and backward, with 32 and 64
// 1.5-3x; below 16 the GEMMs' inner dimension is too short for OpenBLAS.
constexpr i64 kAutoMinChannels = 16;
// ... and at least this many images: below, the fixed costs of a call (transforming the
// filters, once more for dx) outweigh the saving (deep_cnn's step: 1.16 ms with im2col
// against 1.88 at batch 1, even at 4, 14.0 against 20.1 ms at 32).
constexpr i64 kAutoMinImages = 4;

// This thread's buffer for slot Slot, kept across calls.
struct WinogradScratch;
template <int Slot>
float* scratch(i64 n) {
    return kept_buffer<float, WinogradScratch, Slot>(n);
}

struct Tiling {
    i64 N, Cin, H, W, Cout, pad;
    i64 OH, OW, th, tw, Tn;  // output plane; tiles per side and per image
    i64 Hp, Wp;              // the padded channel-last plane a chunk's tiles read
    i64 imgs, chunks;        // images per chunk (the last may have fewer), chunk count
};

Tiling tiling(i64 N, i64 Cin, i64 H, i64 W, i64 Cout, i64 pad) {
    Tiling t{};
    t.N = N, t.Cin = Cin, t.H = H, t.W = W, t.Cout = Cout, t.pad = pad;
    t.OH = H + 2 * pad - 2, t.OW = W + 2 * pad - 2;
    t.th = (t.OH + 3) / 4, t.tw = (t.OW + 3) / 4;
    t.Tn = checked_mul(t.th, t.tw, "Winograd tiles per image");
    t.Hp = 4 * t.th + 2, t.Wp = 4 * t.tw + 2;
    const i64 per_image = checked_mul(checked_mul(kTaps * 4, t.Tn, "Winograd buffer bytes"), Cin + Cout,
                                      "Winograd buffer bytes");
    // As many chunks as the byte budget asks, made even (two threads share them evenly) and
    // of equal size: the partition depends on the shapes only, never on the thread count.
    const i64 most = std::clamp<i64>(kChunkBytes / std::max<i64>(1, per_image), 1, std::max<i64>(1, N));
    i64 chunks = (N + most - 1) / most;
    if (chunks % 2 == 1 && chunks < N) ++chunks;
    t.imgs = std::max<i64>(1, (N + chunks - 1) / std::max<i64>(1, chunks));
    t.chunks = (N + t.imgs - 1) / t.imgs;
    return t;
}

// ---- the transforms, over n <= kLanes channels (the innermost, contiguous axis) --------
// out[k*os + c] for k = 0..5 from in[k*is + c]: the rows of B^T applied along one axis.
FL_ALWAYS_INLINE void apply_bt(float* out, i64 os, const float* in, i64 is, i64 n) {
    FL_SIMD
    for (i64 c = 0; c < n; ++c) {
        const float d0 = in[c], d1 = in[is + c], d2 = in[2 * is + c];
        const float d3 = in[3 * is + c], d4 = in[4 * is + c], d5 = in[5 * is + c];
        out[c] = 4.0f * d0 - 5.0f * d2 + d4;
        out[os + c] = (d3 + d4) - 4.0f * (d1 + d2);
        out[2 * os + c] = (d4 - d3) + 4.0f * (d1 - d2);
        out[3 * os + c] = (d4 - d2) + 2.0f * (d3 - d1);
        out[4 * os + c] = (d4 - d2) - 2.0f * (d3 - d1);
        out[5 * os + c] = 4.0f * d1 - 5.0f * d3 + d5;
    }
}

// out[k*os + c] for k = 0..3 from in[k*is + c], k = 0..5: the rows of A^T.
FL_ALWAYS_INLINE void apply_at(float* out, i64 os, const float* in, i64 is, i64 n) {
    FL_SIMD
    for (i64 c = 0; c < n; ++c) {
        const float m0 = in[c], m1 = in[is + c], m2 = in[2 * is + c];
        const float m3 = in[3 * is + c], m4 = in[4 * is + c], m5 = in[5 * is + c];
        const float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
        out[c] = m0 + s12 + s34;
        out[os + c] = d12 + 2.0f * d34;
        out[2 * os + c] = s12 + 4.0f * s34;
        out[3 * os + c] = d12 + 8.0f * d34 + m5;
    }
}

// out[k*os + c] for k = 0..5 from in[k*is + c], k = 0..3: the rows of A (A^T's adjoint).
FL_ALWAYS_INLINE void apply_a(float* out, i64 os, const float* in, i64 is, i64 n) {
    FL_SIMD
    for (i64 c = 0; c < n; ++c) {
        const float y0 = in[c], y1 = in[is + c], y2 = in[2 * is + c], y3 = in[3 * is + c];
        const float s02 = y0 + y2, s13 = y1 + y3, e02 = y0 + 4.0f * y2, e13 = 2.0f * y1 + 8.0f * y3;
        out[c] = y0;
        out[os + c] = s02 + s13;
        out[2 * os + c] = s02 - s13;
        out[3 * os + c] = e02 + e13;
        out[4 * os + c] = e02 - e13;
        out[5 * os + c] = y3;
    }
}

// xh (Hp, Wp, Cin) = plane x (Cin, H, W) channel-last, shifted by pad, zero elsewhere.
void to_padded_channel_last(float* xh, const float* x, const Tiling& t) {
    const i64 C = t.Cin, H = t.H, W = t.W, pad = t.pad, Wp = t.Wp;
    std::fill(xh, xh + t.Hp * Wp * C, 0.0f);
    const i64 rows = std::min(H, t.Hp - pad), cols = std::min(W, Wp - pad);
    transpose::to_channel_last(xh + (pad * Wp + pad) * C, Wp * C, C, x, H * W, W, C, rows, cols);
}

// V[xi][t0 + tile][c] (V is (36, T, Cin)) for every tile of one image's padded plane xh.
FL_ALWAYS_INLINE void input_transform(float* V, const float* xh, const Tiling& t, i64 t0, i64 T) {
    const i64 C = t.Cin, Wp = t.Wp, TC = T * C;
    alignas(64) float tmp[36 * kLanes];  // (6 rows i, 6 columns q, lanes)
    for (i64 ty = 0; ty < t.th; ++ty)
        for (i64 tx = 0; tx < t.tw; ++tx) {
            const float* d = xh + (4 * ty * Wp + 4 * tx) * C;  // d[p][q][c] = d[(p*Wp + q)*C + c]
            float* v = V + (t0 + ty * t.tw + tx) * C;        // v[xi*TC + c]
            for (i64 c0 = 0; c0 < C; c0 += kLanes) {
                const i64 n = std::min(kLanes, C - c0);
                for (i64 q = 0; q < 6; ++q) apply_bt(tmp + q * kLanes, 6 * kLanes, d + q * C + c0, Wp * C, n);
                for (i64 i = 0; i < 6; ++i) apply_bt(v + 6 * i * TC + c0, TC, tmp + 6 * i * kLanes, kLanes, n);
            }
        }
}

// One image's output tiles from M (36, T, Cout) into yh (4*th, 4*tw, Cout).
FL_ALWAYS_INLINE void output_transform(float* yh, const float* M, const Tiling& t, i64 t0, i64 T) {
    const i64 K = t.Cout, TK = T * K, row = 4 * t.tw * K;
    alignas(64) float tmp[24 * kLanes];  // (4 rows r, 6 columns j, lanes)
    for (i64 ty = 0; ty < t.th; ++ty)
        for (i64 tx = 0; tx < t.tw; ++tx) {
            const float* m = M + (t0 + ty * t.tw + tx) * K;  // m[xi*TK + k]
            float* y = yh + 4 * ty * row + 4 * tx * K;        // y[r*row + s*K + k]
            for (i64 k0 = 0; k0 < K; k0 += kLanes) {
                const i64 n = std::min(kLanes, K - k0);
                for (i64 j = 0; j < 6; ++j) apply_at(tmp + j * kLanes, 6 * kLanes, m + j * TK + k0, 6 * TK, n);
                for (i64 r = 0; r < 4; ++r) apply_at(y + r * row + k0, K, tmp + 6 * r * kLanes, kLanes, n);
            }
        }
}

// dM[xi][t0 + tile][k] (dM is (36, T, Cout)) = A dY A^T for every tile of one image's
// gradient gh (4*th, 4*tw, Cout), channel-last, zero beyond OH x OW.
FL_ALWAYS_INLINE void gradient_transform(float* dM, const float* gh, const Tiling& t, i64 t0, i64 T) {
    const i64 K = t.Cout, TK = T * K, row = 4 * t.tw * K;
    alignas(64) float tmp[24 * kLanes];  // (6 rows q, 4 columns s, lanes)
    for (i64 ty = 0; ty < t.th; ++ty)
        for (i64 tx = 0; tx < t.tw; ++tx) {
            const float* y = gh + 4 * ty * row + 4 * tx * K;  // y[r*row + s*K + k]
            float* m = dM + (t0 + ty * t.tw + tx) * K;         // m[xi*TK + k]
            for (i64 k0 = 0; k0 < K; k0 += kLanes) {
                const i64 n = std::min(kLanes, K - k0);
                for (i64 s = 0; s < 4; ++s) apply_a(tmp + s * kLanes, 4 * kLanes, y + s * K + k0, row, n);
                for (i64 q = 0; q < 6; ++q) apply_a(m + 6 * q * TK + k0, TK, tmp + 4 * q * kLanes, kLanes, n);
            }
        }
}

// The per-image transforms, built for baseline x86-64 and for AVX-512 (isa_dispatch.h).
struct Transforms {
    void (*input)(float*, const float*, const Tiling&, i64, i64);
    void (*output)(float*, const float*, const Tiling&, i64, i64);
    void (*gradient)(float*, const float*, const Tiling&, i64, i64);
};

void input_base(float* V, const float* xh, const Tiling& t, i64 t0, i64 T) { input_transform(V, xh, t, t0, T); }
void output_base(float* yh, const float* M, const Tiling& t, i64 t0, i64 T) { output_transform(yh, M, t, t0, T); }
void gradient_base(float* dM, const float* gh, const Tiling& t, i64 t0, i64 T) {
    gradient_transform(dM, gh, t, t0, T);
}
#ifdef FL_AVX512_DISPATCH
FL_TARGET_AVX512 void input_avx512(float* V, const float* xh, const Tiling& t, i64 t0, i64 T) {
    input_transform(V, xh, t, t0, T);
}
FL_TARGET_AVX512 void output_avx512(float* yh, const float* M, const Tiling& t, i64 t0, i64 T) {
    output_transform(yh, M, t, t0, T);
}
FL_TARGET_AVX512 void gradient_avx512(float* dM, const float* gh, const Tiling& t, i64 t0, i64 T) {
    gradient_transform(dM, gh, t, t0, T);
}
#endif

Transforms transforms() {
#ifdef FL_AVX512_DISPATCH
    if (cpu_has_avx512()) return {input_avx512, output_avx512, gradient_avx512};
#endif
    return {input_base, output_base, gradient_base};
}

// V (36, T, Cin) for images [n0, n1) of x (N, Cin, H, W).
void transform_inputs(float* V, const float* x, const Tiling& t, i64 n0, i64 n1, const Transforms& tr) {
    const i64 T = (n1 - n0) * t.Tn, CHW = t.Cin * t.H * t.W;
    float* xh = scratch<0>(t.Hp * t.Wp * t.Cin);  // (Hp, Wp, Cin)
    for (i64 n = n0; n < n1; ++n) {
        to_padded_channel_last(xh, x + n * CHW, t);
        tr.input(V, xh, t, (n - n0) * t.Tn, T);
    }
}

// Whether winograd_conv finishes an image's output where the tiles leave it, channel-last
// (bias_channel_last): whole vectors of channels, an AVX-512 CPU.
bool finishes_channel_last(i64 Cout) {
#ifdef FL_AVX512_DISPATCH
    return Cout % 16 == 0 && cpu_has_avx512();
#else
    (void)Cout;
    return false;
#endif
}

// ... and whether its fused pooling pools there too (pool_channel_last): 2x2 windows at
// stride 2, no padding, int32 indices.
bool pools_channel_last(const PoolGeometry* pool, i64 Cout, i64 P) {
    return pool && pool->PH == 2 && pool->PW == 2 && pool->stride == 2 && pool->pad == 0 && P < (i64{1} << 31) &&
           finishes_channel_last(Cout);
}

#ifdef FL_AVX512_DISPATCH
// One image's output in its channel-last tiles yh (4*th, 4*tw, Cout), pixel (oh, ow) at
// yh + oh*row + ow*Cout, Cout a whole number of vectors: the bias added in place (b may be
// null), then the ReLU when asked (v <= 0 -> 0, NaN kept): the float operations the planar
// path makes, a vector of channels at a time. Returns whether every biased value is finite.
FL_TARGET_AVX512 bool bias_channel_last(float* yh, i64 row, const float* b, i64 Cout, i64 OH, i64 OW, bool relu) {
    const __m512 zero = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (i64 oh = 0; oh < OH; ++oh)
        for (i64 ow = 0; ow < OW; ++ow) {
            float* p = yh + oh * row + ow * Cout;
            for (i64 c = 0; c < Cout; c += 16) {
                __m512 y = _mm512_add_ps(_mm512_loadu_ps(p + c), b ? _mm512_loadu_ps(b + c) : zero);
                bad |= vm::nonfinite_lanes(y);
                if (relu) y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(y, zero, _CMP_LE_OQ), zero);
                _mm512_storeu_ps(p + c, y);
            }
        }
    return bad == 0;
}

// The same image pooled without the planar copy of its whole output that maxpool2d_forward
// would read: the bias added (bias_channel_last), then each window's four pixels are four
// vectors of 16 channels, pooled with the ReLU by vm::relu_max2x2 (the bits of relu then
// maxpool2d_forward), into val and idx (PP, Cout), which are transposed to outn and amn
// (Cout, PP). Returns whether every biased output was finite.
FL_TARGET_AVX512 bool pool_channel_last(float* outn, std::int32_t* amn, float* yh, i64 row, const float* b, i64 Cout,
                                        i64 OH, i64 OW, const PoolGeometry& pool, float* val, std::int32_t* idx) {
    const i64 CV = Cout / 16, POH = pool.OH, POW = pool.OW, PP = POH * POW;
    const bool finite = bias_channel_last(yh, row, b, Cout, OH, OW, false);
    for (i64 ph = 0; ph < POH; ++ph)
        for (i64 pw = 0; pw < POW; ++pw) {
            const float* p = yh + 2 * ph * row + 2 * pw * Cout;
            const i64 q = ph * POW + pw;
            const auto top = static_cast<std::int32_t>(2 * ph * OW + 2 * pw);
            for (i64 v = 0; v < CV; ++v) {
                const __m512 c[4] = {_mm512_loadu_ps(p + 16 * v), _mm512_loadu_ps(p + Cout + 16 * v),
                                     _mm512_loadu_ps(p + row + 16 * v), _mm512_loadu_ps(p + row + Cout + 16 * v)};
                __m512 best;
                __m512i id;
                vm::relu_max2x2(best, id, c, top, static_cast<std::int32_t>(OW));
                _mm512_storeu_ps(val + q * Cout + 16 * v, best);
                _mm512_storeu_si512(idx + q * Cout + 16 * v, id);
            }
        }
    transpose::to_planar(outn, PP, POW, val, POW * Cout, Cout, Cout, POH, POW);
    transpose::to_planar_int32(amn, PP, idx, Cout, Cout, PP);
    return finite;
}
#endif

}  // namespace

bool winograd_applies(const ConvGeometry& g) {
    // pad <= 2: dx's convolution pads dY by 2 - pad.
    const int mode = conv_algorithm();
    if (mode == kConvIm2col || g.FH != 3 || g.FW != 3 || g.stride != 1 || g.pad > 2 || g.N == 0 || g.C == 0 ||
        g.FN == 0 || g.OH < 1 || g.OW < 1)
        return false;
    const double tiles = double((g.OH + 3) / 4) * double((g.OW + 3) / 4);
    if (tiles * kTaps * 4.0 * double(g.C + g.FN) > kMaxImageBytes) return false;
    return mode == kConvWinograd || (std::min(g.C, g.FN) >= kAutoMinChannels && g.N >= kAutoMinImages);
}

// F(4x4, 3x3)'s G, for the filter transform U = G w G^T and its adjoint dW = G^T dU G.
constexpr double kG[6][3] = {{1.0 / 4, 0, 0},         {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                             {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};

struct WinogradFilters;

const float* winograd_filters(const float* W, i64 FN, i64 C, bool for_dx) {
    const i64 Cin = for_dx ? FN : C, Cout = for_dx ? C : FN;
    const i64 CK = checked_mul(Cin, Cout, "Cin*Cout"), n = checked_mul(kTaps, CK, "U size");
    // Every element is written below, so the kept buffer is not cleared first.
    float* U = for_dx ? kept_buffer<float, WinogradFilters, 1>(n) : kept_buffer<float, WinogradFilters, 0>(n);
    // One input channel per task, all output channels at once: the arithmetic runs along
    // the output channels, U's contiguous axis, so it vectorises.
    parallel_for(Cin, [&](i64 ci) {
        std::vector<double> w(static_cast<size_t>(9 * Cout)), gw(static_cast<size_t>(18 * Cout));
        for (i64 co = 0; co < Cout; ++co)
            for (int k = 0; k < 9; ++k)  // w[k][co] = tap k = 3i + j of the filter ci -> co
                w[k * Cout + co] = for_dx ? double(W[(ci * C + co) * 9 + 8 - k]) : double(W[(co * C + ci) * 9 + k]);
        for (int p = 0; p < 6; ++p)  // gw = G w (6, 3)
            for (int j = 0; j < 3; ++j) {
                double* o = gw.data() + (p * 3 + j) * Cout;
                const double *w0 = w.data() + j * Cout, *w1 = w0 + 3 * Cout, *w2 = w1 + 3 * Cout;
                FL_SIMD
                for (i64 co = 0; co < Cout; ++co) o[co] = kG[p][0] * w0[co] + kG[p][1] * w1[co] + kG[p][2] * w2[co];
            }
        for (int p = 0; p < 6; ++p)  // U = (G w) G^T (6, 6)
            for (int q = 0; q < 6; ++q) {
                float* u = U + (p * 6 + q) * CK + ci * Cout;
                const double *g0 = gw.data() + p * 3 * Cout, *g1 = g0 + Cout, *g2 = g1 + Cout;
                FL_SIMD
                for (i64 co = 0; co < Cout; ++co)
                    u[co] = static_cast<float>(g0[co] * kG[q][0] + g1[co] * kG[q][1] + g2[co] * kG[q][2]);
            }
    }, std::max<i64>(1, 1024 / std::max<i64>(1, Cout)));
    return U;
}

i64 winograd_scratch_bytes(const ConvGeometry& g, bool dx, int fused, i64 threads, bool backward,
                           const PoolGeometry* pool) {
    if (!winograd_applies(g)) return 0;
    // Per-thread slots 0..3 (padded plane, V, M or dM, channel-last output or gradient), each
    // kept at the largest size any pass asks; a pass uses min(threads, chunks) threads.
    double slot[4] = {0, 0, 0, 0};
    double team = 1, once;
    auto pass = [&](const Tiling& t, i64 Cin, i64 Cout) {
        const double T = double(t.imgs) * double(t.Tn);
        slot[0] = std::max(slot[0], double(t.Hp) * double(t.Wp) * double(Cin));
        slot[1] = std::max(slot[1], kTaps * T * double(Cin));
        slot[2] = std::max(slot[2], kTaps * T * double(Cout));
        slot[3] = std::max(slot[3], 16.0 * double(t.Tn) * double(Cout));
        team = std::max(team, double(std::min(std::max<i64>(1, threads), t.chunks)));
    };
    const Tiling fw = tiling(g.N, g.C, g.H, g.W, g.FN, g.pad);
    const double batch_out = double(g.N) * double(g.FN) * double(g.OH) * double(g.OW);
    pass(fw, g.C, g.FN);  // the forward and dW run the same tiling
    const double forward_team = team;
    // Forward: the transformed filters (and, pooled, one image's output per thread, slot 5);
    // backward: the dW partials, the batch's (masked or routed) gradient and dx's transformed
    // filters.
    const double forward = kTaps * double(g.C) * double(g.FN);
    double back = 0.0;
    if (backward) {
        back = double(fw.chunks) * kTaps * double(g.C) * double(g.FN) + (fused >= 1 ? batch_out : 0.0);
        // With the ReLU alone, each plane's sum in double, taken while masking it.
        if (fused == 1) back += 2.0 * double(g.N) * double(g.FN);
        if (dx) {
            pass(tiling(g.N, g.FN, g.OH, g.OW, g.C, 2 - g.pad), g.FN, g.C);
            back += kTaps * double(g.C) * double(g.FN);
        }
    }
    once = std::max(forward, back);
    // Pooled, one image's output per thread, or where it pools channel-last the pooled values
    // and their int32 argmax, (PP, FN) each.
    double image_out = fused == 2 ? double(g.FN) * double(g.OH) * double(g.OW) : 0.0;
    if (fused == 2 && pools_channel_last(pool, g.FN, g.OH * g.OW))
        image_out = 2.0 * double(pool->OH) * double(pool->OW) * double(g.FN);
    return static_cast<i64>((team * (slot[0] + slot[1] + slot[2] + slot[3]) + forward_team * image_out + once) *
                            sizeof(float));
}

bool winograd_conv(float* out, const float* x, const float* U, const float* b, bool relu, i64 N, i64 Cin,
                   i64 H, i64 W, i64 Cout, i64 pad, const PoolGeometry* pool, std::int32_t* argmax) {
    // out (N, Cout, OH, OW), or pooled (N, Cout, POH, POW) with argmax alike; x (N, Cin, H, W);
    // U (36, Cin, Cout); b (Cout,) or null
    if (N == 0 || Cout == 0) return true;
    PoolGeometry one{};  // the pooling of one image's planes
    if (pool) {
        one = *pool;
        one.N = 1;
    }
    const Tiling t = tiling(N, Cin, H, W, Cout, pad);
    const Transforms tr = transforms();
    const i64 P = t.OH * t.OW, row = 4 * t.tw * Cout, CK = Cin * Cout;
    const bool channel_last = relu && pools_channel_last(pool, Cout, P);
    const bool finish_channel_last = finishes_channel_last(Cout);
    std::vector<char> finite(static_cast<size_t>(t.chunks), 1);
    parallel_for(t.chunks, [&](i64 ci) {
        const i64 n0 = ci * t.imgs, n1 = std::min(N, n0 + t.imgs), T = (n1 - n0) * t.Tn;
        float* V = scratch<1>(kTaps * T * Cin);   // (36, T, Cin)
        float* M = scratch<2>(kTaps * T * Cout);  // (36, T, Cout)
        float* yh = scratch<3>(16 * t.Tn * Cout);  // (4*th, 4*tw, Cout)
        if (Cin > 0) {
            transform_inputs(V, x, t, n0, n1, tr);
            for (i64 xi = 0; xi < kTaps; ++xi)
                blas::gemm(false, false, T, Cout, Cin, 1.0f, V + xi * T * Cin, Cin, U + xi * CK, Cout, 0.0f,
                           M + xi * T * Cout, Cout);
        } else {
            std::fill(M, M + kTaps * T * Cout, 0.0f);
        }
        bool bad = false;
        for (i64 n = n0; n < n1; ++n) {
            tr.output(yh, M, t, (n - n0) * t.Tn, T);
#ifdef FL_AVX512_DISPATCH
            if (channel_last) {
                const i64 PP = pool->OH * pool->OW;
                float* val = scratch<5>(PP * Cout);  // (PP, Cout) pooled, channel-last
                std::int32_t* idx = kept_buffer<std::int32_t, WinogradScratch, 5>(PP * Cout);  // and argmax
                if (!pool_channel_last(out + n * Cout * PP, argmax + n * Cout * PP, yh, row, b, Cout, t.OH, t.OW,
                                       one, val, idx))
                    bad = true;
                continue;
            }
            if (!pool && finish_channel_last) {
                if (!bias_channel_last(yh, row, b, Cout, t.OH, t.OW, relu)) bad = true;
                transpose::to_planar(out + n * Cout * P, P, t.OW, yh, row, Cout, Cout, t.OH, t.OW);
                continue;
            }
#endif
            // (Cout, OH, OW): the output, or with pooling this thread's planes of one image,
            // pooled while they are in cache.
            float* o = pool ? scratch<5>(Cout * P) : out + n * Cout * P;
            // The planes gathered from the channel-last tiles (transpose.h), then, plane by
            // plane while it is in cache, biased, checked and rectified: separate branch-free
            // passes (a ReLU inside the gather is a branch per element that random signs
            // mispredict half the time).
            transpose::to_planar(o, P, t.OW, yh, row, Cout, Cout, t.OH, t.OW);
            for (i64 k = 0; k < Cout; ++k) {
                const float bias = b ? b[k] : 0.0f;
                float* ok = o + k * P;
                FL_SIMD
                for (i64 q = 0; q < P; ++q) ok[q] += bias;
                // A float32 plane's sum in double is finite exactly when every value is.
                if (!std::isfinite(vm::sum_lanes(ok, P))) bad = true;
                if (relu) {
                    FL_SIMD
                    for (i64 q = 0; q < P; ++q) ok[q] = ok[q] > 0.0f || ok[q] != ok[q] ? ok[q] : 0.0f;
                }
            }
            if (pool) {
                const i64 PP = pool->OH * pool->OW;
                maxpool2d_forward(out + n * Cout * PP, argmax + n * Cout * PP, o, one);
            }
        }
        finite[static_cast<size_t>(ci)] = !bad;
    });
    return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

bool winograd_dW(float* dW, const float* g, const float* x, const ConvGeometry& geo) {
    // dW (FN, C, 3, 3) overwritten; g (N, FN, OH, OW); x (N, C, H, W)
    const i64 N = geo.N, C = geo.C, FN = geo.FN;
    std::fill(dW, dW + FN * C * 9, 0.0f);
    if (N == 0 || C == 0 || FN == 0) return true;
    const Tiling t = tiling(N, C, geo.H, geo.W, FN, geo.pad);
    const Transforms tr = transforms();
    const i64 CK = checked_mul(C, FN, "C*FN"), P = t.OH * t.OW, row = 4 * t.tw * FN;
    const i64 part = kTaps * CK;  // one chunk's dU (36, C, FN)
    // Kept on the calling thread (slot 4) across calls; every chunk overwrites its part.
    float* dU = scratch<4>(checked_mul(t.chunks, part, "Winograd dW partials"));
    parallel_for(t.chunks, [&](i64 ci) {
        const i64 n0 = ci * t.imgs, n1 = std::min(N, n0 + t.imgs), T = (n1 - n0) * t.Tn;
        float* V = scratch<1>(kTaps * T * C);    // (36, T, C)
        float* dM = scratch<2>(kTaps * T * FN);  // (36, T, FN)
        float* gh = scratch<3>(16 * t.Tn * FN);  // (4*th, 4*tw, FN)
        transform_inputs(V, x, t, n0, n1, tr);
        for (i64 n = n0; n < n1; ++n) {
            std::fill(gh, gh + 16 * t.Tn * FN, 0.0f);
            const float* gn = g + n * FN * P;  // (FN, OH, OW)
            transpose::to_channel_last(gh, row, FN, gn, P, t.OW, FN, t.OH, t.OW);
            tr.gradient(dM, gh, t, (n - n0) * t.Tn, T);
        }
        float* dUc = dU + ci * part;
        for (i64 xi = 0; xi < kTaps; ++xi)
            blas::gemm(true, false, C, FN, T, 1.0f, V + xi * T * C, C, dM + xi * T * FN, FN, 0.0f,
                       dUc + xi * CK, FN);
    });
    // Per input channel c, along the filters f (dU's contiguous axis): the partials added in
    // chunk order, then dW = G^T dU G, in double.
    std::vector<char> finite(static_cast<size_t>(C), 1);
    parallel_for(C, [&](i64 c) {
        std::vector<double> u(static_cast<size_t>(kTaps * FN)), ug(static_cast<size_t>(18 * FN));
        for (i64 xi = 0; xi < kTaps; ++xi) {
            double* o = u.data() + xi * FN;
            std::fill(o, o + FN, 0.0);
            for (i64 ci = 0; ci < t.chunks; ++ci) {
                const float* part_c = dU + ci * part + xi * CK + c * FN;
                FL_SIMD
                for (i64 f = 0; f < FN; ++f) o[f] += double(part_c[f]);
            }
        }
        for (int p = 0; p < 6; ++p)  // ug = dU G (6, 3)
            for (int j = 0; j < 3; ++j) {
                double* o = ug.data() + (p * 3 + j) * FN;
                std::fill(o, o + FN, 0.0);
                for (int q = 0; q < 6; ++q) {
                    const double* uq = u.data() + (p * 6 + q) * FN;
                    const double gq = kG[q][j];
                    FL_SIMD
                    for (i64 f = 0; f < FN; ++f) o[f] += uq[f] * gq;
                }
            }
        for (int i = 0; i < 3; ++i)  // dW = G^T (dU G) (3, 3)
            for (int j = 0; j < 3; ++j)
                for (i64 f = 0; f < FN; ++f) {
                    double s = 0.0;
                    for (int p = 0; p < 6; ++p) s += kG[p][i] * ug[static_cast<size_t>((p * 3 + j) * FN + f)];
                    const float w = static_cast<float>(s);
                    if (!(w - w == 0.0f)) finite[static_cast<size_t>(c)] = 0;
                    dW[(f * C + c) * 9 + i * 3 + j] = w;
                }
    }, std::max<i64>(1, 256 / std::max<i64>(1, FN)));
    return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

}  // namespace fl
