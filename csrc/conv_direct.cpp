// Direct convolution for float32 stride-1 layers with few input channels (see conv_direct.h
// for the flat-position layout and the dims legend).
//
// Why not im2col. simple_cnn's first layer is a (57600, 25) @ (25, 30) product per batch: an
// inner dimension of 25 and 30 columns leave OpenBLAS mostly packing, and the col it packs is
// 25 copies of every image. Here each image is read where it lies.
//
// Forward. For a block of fb filters and 32 consecutive flat positions, 2*fb vector
// accumulators start at the bias; each tap loads two vectors of xf and adds W[f][t] * x to
// both of every filter's accumulators (one broadcast, two FMAs a filter). Per tap 2 loads
// and fb broadcasts feed 2*fb FMAs, so the FMA unit sets the pace. fb <= 14: 28
// accumulators, two x vectors and a broadcast fill the 32 vector registers. FN is padded
// with zero filters to a whole number of blocks.
//
// Forward fused with ReLU and 2x2 stride-2 max pooling. Pooling the flat outputs would take a
// pass of its own (a row of windows per vector, permutes to pair the columns), which cost a
// third of the convolution. So the vectors turn the other way: 16 filters along each, and a
// block of R pooling windows in a row keeps the 4*R pixels' accumulators of FG filter
// vectors (pooled_forward_block); per tap, FG weight loads and 4*R broadcasts feed 4*R*FG
// FMAs. The window's ReLU, maximum and argmax are then selects between registers, and only
// the pooled values reach memory.
//
// Backward, fused with ReLU and max pooling, dx not wanted (a network's first layer). The
// gradient of the convolution's output y is zero except at each window's argmax, so
//   dW[f] = sum over n and pooled q of m_n[f][q] * patch_n(argmax_n[f][q]),
//   m = dout where the pooled out > 0 (the ReLU's mask; out is the chosen y),
// a quarter of the dense sum's products for 2x2 pooling, with no gradient plane built and no
// scatter. Per image the K-float patches of all P pixels are laid out once (colT, a row per
// pixel, padded to Kp = 16*KV floats); each (f, q) is then KV FMAs of a broadcast m into a
// filter's KV-vector partial sum, over four chains. The partial sums are kept per fixed
// image group and added group by group at the end: the same bits for any thread count. A
// dense backward of this kind (vectors along the positions) measured no faster than im2col's
// GEMMs, so a backward that is not pooled runs im2col; one that wants dx, or has patches of
// more than 64 floats, runs conv_pooled.cpp's channel-last sparse backward.
//
// db is each filter's sum of m in double, as the im2col path sums it.
#include "conv_direct.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "isa_dispatch.h"
#include "pool.h"
#include "transpose.h"
#include "vecmath.h"

#ifdef FL_AVX512_DISPATCH
#include <immintrin.h>
#endif

namespace fl {

namespace {

constexpr i64 kMaxFW = 16;            // a patch's filter row is one vector move
constexpr i64 kForwardMaxBlock = 14;  // filters per forward block (2 vectors each)
constexpr i64 kAutoMaxTaps = 64;      // "auto": C*FH*FW up to this
constexpr i64 kMaxPooledTaps = 64;    // the pooled backward's patches: at most 4 vectors
constexpr i64 kMaxGroups = 8;         // image groups carrying dW partials, as in conv2d.cpp
// One image's per-thread buffers stay under this, or the layer runs im2col.
constexpr double kMaxImageBytes = double(i64{16} << 20);

DirectLayout flat(const ConvGeometry& g) {
    DirectLayout f;
    f.Wp = g.W + 2 * g.pad;
    f.plane = (g.H + 2 * g.pad) * f.Wp;
    f.Pr = ((g.OH - 1) * f.Wp + g.OW + 31) / 32 * 32;
    f.off.reserve(static_cast<size_t>(g.C * g.FH * g.FW));
    for (i64 c = 0; c < g.C; ++c)
        for (i64 i = 0; i < g.FH; ++i)
            for (i64 j = 0; j < g.FW; ++j) f.off.push_back(c * f.plane + i * f.Wp + j);
    // + 16: build_patches reads 16 floats from the last tap of the last pixel.
    f.xlen = std::max(g.C * f.plane, f.Pr + f.off.back()) + 16;
    return f;
}

// Filters padded to whole blocks of at most max_block: the fewest blocks, then the
// smallest block that covers FN with them.
std::pair<i64, i64> blocks_of(i64 FN, i64 max_block) {
    const i64 nb = (FN + max_block - 1) / max_block, fb = (FN + nb - 1) / nb;
    return {fb, nb * fb};
}

// The floats each per-thread buffer of one image asks for (scratch() adds kAlignSlack),
// from doubles: this runs before anything is known to fit int64.
struct ImageBuffers {
    double x;        // slot 0: the padded image, xlen
    double flat;     // slot 1, forward: the flat outputs (FNp, Pr)
    double patches;  // slot 1, pooled backward: colT (P, Kp) + 16 of slack
};

ImageBuffers image_buffers(const ConvGeometry& g) {
    const double Wp = double(g.W + 2 * g.pad), plane = double(g.H + 2 * g.pad) * Wp;
    const double Pf = double(g.OH - 1) * Wp + double(g.OW), Pr = std::ceil(Pf / 32) * 32;
    const double off_max = double(g.C - 1) * plane + double(g.FH - 1) * Wp + double(g.FW - 1);
    const double FNp = double(blocks_of(g.FN, kForwardMaxBlock).second);
    const double Kp = std::ceil(double(g.C) * double(g.FH) * double(g.FW) / 16) * 16;
    return {std::max(double(g.C) * plane, Pr + off_max) + 16, FNp * Pr, double(g.OH) * double(g.OW) * Kp + 16};
}

// This thread's buffer of n floats for slot Slot, kept across calls, on a 64-byte boundary:
// the flat outputs are then written a whole cache line a vector.
struct DirectScratch;
template <int Slot>
float* scratch(i64 n) {
    return kept_buffer_aligned<float, DirectScratch, Slot>(n);
}

// xf (xlen,) = image xn (C, H, W) zero-padded, planes one after another, zeros after them.
void pad_image(float* xf, const float* xn, const ConvGeometry& g, const DirectLayout& fl) {
    std::memset(xf, 0, static_cast<size_t>(fl.xlen) * sizeof(float));
    for (i64 c = 0; c < g.C; ++c)
        for (i64 h = 0; h < g.H; ++h)
            std::memcpy(xf + c * fl.plane + (h + g.pad) * fl.Wp + g.pad, xn + (c * g.H + h) * g.W,
                        static_cast<size_t>(g.W) * sizeof(float));
}

#ifdef FL_AVX512_DISPATCH

// y (FB, ldy) flat outputs [0, Pr) of filters [f0, f0 + FB): w = Wt + f0 (K, FNp), b = bias + f0.
template <int FB>
FL_TARGET_AVX512 void forward_block(float* y, i64 ldy, const float* xf, const float* w, i64 FNp, const float* b,
                                    const i64* off, i64 K, i64 Pr) {
    for (i64 p = 0; p < Pr; p += 32) {
        __m512 a0[FB], a1[FB];
#pragma GCC unroll 14
        for (int f = 0; f < FB; ++f) a0[f] = a1[f] = _mm512_set1_ps(b[f]);
        for (i64 t = 0; t < K; ++t) {
            const float* xp = xf + p + off[t];
            const __m512 x0 = _mm512_loadu_ps(xp), x1 = _mm512_loadu_ps(xp + 16);
            const float* wt = w + t * FNp;
#pragma GCC unroll 14
            for (int f = 0; f < FB; ++f) {
                const __m512 wv = _mm512_set1_ps(wt[f]);
                a0[f] = _mm512_fmadd_ps(wv, x0, a0[f]);
                a1[f] = _mm512_fmadd_ps(wv, x1, a1[f]);
            }
        }
#pragma GCC unroll 14
        for (int f = 0; f < FB; ++f) {
            _mm512_storeu_ps(y + f * ldy + p, a0[f]);
            _mm512_storeu_ps(y + f * ldy + p + 16, a1[f]);
        }
    }
}

using ForwardBlock = void (*)(float*, i64, const float*, const float*, i64, const float*, const i64*, i64, i64);

template <std::size_t... I>
constexpr std::array<ForwardBlock, sizeof...(I)> forward_table(std::index_sequence<I...>) {
    return {&forward_block<int(I) + 1>...};
}
constexpr auto kForward = forward_table(std::make_index_sequence<kForwardMaxBlock>{});

// Output rows from the flat block: yn[f][oh][ow] = y[f][oh*Wp + ow], through the ReLU (NaN
// kept, as relu_forward keeps it) when asked.
FL_TARGET_AVX512 void unflatten(float* yn, const float* y, i64 ldy, const ConvGeometry& g, i64 Wp, bool relu) {
    const i64 OH = g.OH, OW = g.OW;
    const __m512 zero = _mm512_setzero_ps();
    for (i64 f = 0; f < g.FN; ++f)
        for (i64 oh = 0; oh < OH; ++oh) {
            const float* s = y + f * ldy + oh * Wp;
            float* d = yn + (f * OH + oh) * OW;
            for (i64 k = 0; k < OW; k += 16) {
                const __mmask16 m = static_cast<__mmask16>(OW - k >= 16 ? 0xFFFF : (1u << (OW - k)) - 1u);
                __m512 v = _mm512_maskz_loadu_ps(m, s + k);
                // v <= 0 (ordered): 0; v > 0 or NaN: v.
                if (relu) v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_LE_OQ), v, zero);
                _mm512_mask_storeu_ps(d + k, m, v);
            }
        }
}

// colT (P, Kp + 16), 64-byte aligned: row p = oh*OW + ow holds the patch output pixel p
// reads, tap t at colT[p*Kp + t] (t = (c*FH + i)*FW + j); [K, Kp) holds zeros or copies of
// this image's x, which only reach lanes of the partial sums that are never read. Filter row
// r is one unaligned move of 8 or 16 floats to colT[p*Kp + r*FW]: each move's spill past its
// FW floats is overwritten by the next row, or by the next patch (rows are built in order;
// 16 floats of slack after the last). Masked moves would be exact but cost ~20% of this
// backward on this machine; zeroing the row's last vector first (aligned) costs little.
FL_TARGET_AVX512 void build_patches(float* colT, i64 Kp, const float* xf, const ConvGeometry& g,
                                    const DirectLayout& fl) {
    const i64 FW = g.FW, rows = g.C * g.FH;
    const i64* off = fl.off.data();
    const __m512 zero = _mm512_setzero_ps();
    for (i64 oh = 0; oh < g.OH; ++oh)
        for (i64 ow = 0; ow < g.OW; ++ow) {
            float* d = colT + (oh * g.OW + ow) * Kp;
            const float* s = xf + oh * fl.Wp + ow;
            _mm512_store_ps(d + Kp - 16, zero);  // [K, Kp) lies in the last vector
            if (FW <= 8) {
                // 32-byte moves: 64-byte ones at these 4-byte offsets cross a cache line every
                // time, and measured slower here.
                for (i64 r = 0; r < rows; ++r) _mm256_storeu_ps(d + r * FW, _mm256_loadu_ps(s + off[r * FW]));
            } else {
                for (i64 r = 0; r < rows; ++r) _mm512_storeu_ps(d + r * FW, _mm512_loadu_ps(s + off[r * FW]));
            }
        }
}

// acc (Kp,) += sum over q of m[q] * colT[am[q]] for one filter: KV vectors a patch, four
// independent chains over q so the FMA latency is hidden, added in a fixed order.
template <int KV>
FL_TARGET_AVX512 void pooled_filter(float* acc, const float* colT, const float* m, const std::int32_t* am, i64 PP) {
    constexpr i64 Kp = 16 * KV;
    __m512 a[4][KV];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u)
#pragma GCC unroll 8
        for (int k = 0; k < KV; ++k) a[u][k] = _mm512_setzero_ps();
    i64 q = 0;
    for (; q + 4 <= PP; q += 4)
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) {
            const float* c = colT + am[q + u] * Kp;
            const __m512 mv = _mm512_set1_ps(m[q + u]);
#pragma GCC unroll 8
            for (int k = 0; k < KV; ++k) a[u][k] = _mm512_fmadd_ps(mv, _mm512_loadu_ps(c + 16 * k), a[u][k]);
        }
    for (; q < PP; ++q) {
        const float* c = colT + am[q] * Kp;
        const __m512 mv = _mm512_set1_ps(m[q]);
#pragma GCC unroll 8
        for (int k = 0; k < KV; ++k) a[0][k] = _mm512_fmadd_ps(mv, _mm512_loadu_ps(c + 16 * k), a[0][k]);
    }
#pragma GCC unroll 8
    for (int k = 0; k < KV; ++k) {
        const __m512 sum = _mm512_add_ps(_mm512_add_ps(a[0][k], a[1][k]), _mm512_add_ps(a[2][k], a[3][k]));
        _mm512_storeu_ps(acc + 16 * k, _mm512_add_ps(_mm512_loadu_ps(acc + 16 * k), sum));
    }
}

using PooledFilter = void (*)(float*, const float*, const float*, const std::int32_t*, i64);
constexpr PooledFilter kPooled[4] = {&pooled_filter<1>, &pooled_filter<2>, &pooled_filter<3>, &pooled_filter<4>};

// ---- Forward fused with ReLU and 2x2 stride-2 max pooling, filters along the lanes.
// The block of R windows of a pooled row by FG vectors of 16 filters: window r's four pixels
// (row-major in the window, k = 2*i + j) are four accumulators of the same 16 filters, so the
// window's maximum and argmax are selects between registers. acc[v][r][k] starts at the bias
// and adds the taps in order, one FMA each, as forward_block does: the same bits.
// 4*R*FG accumulators, FG weight vectors and a broadcast fit the 32 registers.
constexpr int kMaxPoolGroup = 4;  // filter vectors per block
constexpr int max_windows(int FG) { return FG == 1 ? 7 : FG == 2 ? 3 : FG == 3 ? 2 : 1; }

// val (R, ld) = the pooled ReLU outputs of filters [0, 16*FG) of the block's windows, idx
// (R, ld) their in-plane flat argmax (oh*OW + ow); x0 = the padded image at the first window's
// top-left pixel (flat, row pitch Wp); w (K, ldw) the filters' weights tap by tap, b (16*FG,)
// their bias; at = the in-plane index of the first window's top-left pixel.
template <int FG, int R>
FL_TARGET_AVX512 void pooled_forward_block(float* val, std::int32_t* idx, i64 ld, const float* x0, i64 Wp,
                                           const float* w, i64 ldw, const float* b, const i64* off, i64 K,
                                           std::int32_t at, std::int32_t OW) {
    __m512 acc[FG][R][4];
#pragma GCC unroll 4
    for (int v = 0; v < FG; ++v) {
        const __m512 bv = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 7
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) acc[v][r][k] = bv;
    }
    for (i64 t = 0; t < K; ++t) {
        const float* x = x0 + off[t];
        const float* wt = w + t * ldw;
        __m512 wv[FG];
#pragma GCC unroll 4
        for (int v = 0; v < FG; ++v) wv[v] = _mm512_loadu_ps(wt + 16 * v);
#pragma GCC unroll 7
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) {
                const __m512 xb = _mm512_set1_ps(x[(k >> 1) * Wp + 2 * r + (k & 1)]);
#pragma GCC unroll 4
                for (int v = 0; v < FG; ++v) acc[v][r][k] = _mm512_fmadd_ps(wv[v], xb, acc[v][r][k]);
            }
    }
#pragma GCC unroll 7
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < FG; ++v) {
            __m512 best;
            __m512i id;
            vm::relu_max2x2(best, id, acc[v][r], at + 2 * r, OW);
            _mm512_storeu_ps(val + r * ld + 16 * v, best);
            _mm512_storeu_si512(idx + r * ld + 16 * v, id);
        }
}

using PooledForwardBlock = void (*)(float*, std::int32_t*, i64, const float*, i64, const float*, i64, const float*,
                                    const i64*, i64, std::int32_t, std::int32_t);
// kPooledForward[FG - 1][R - 1] for R <= max_windows(FG); the entries past it repeat the last.
template <int FG, std::size_t... I>
constexpr std::array<PooledForwardBlock, 7> pooled_forward_row(std::index_sequence<I...>) {
    return {&pooled_forward_block<FG, std::min(int(I) + 1, max_windows(FG))>...};
}
constexpr std::array<std::array<PooledForwardBlock, 7>, kMaxPoolGroup> kPooledForward = {
    pooled_forward_row<1>(std::make_index_sequence<7>{}), pooled_forward_row<2>(std::make_index_sequence<7>{}),
    pooled_forward_row<3>(std::make_index_sequence<7>{}), pooled_forward_row<4>(std::make_index_sequence<7>{})};

#endif  // FL_AVX512_DISPATCH

}  // namespace

bool direct_applies(const ConvGeometry& g) {
#ifdef FL_AVX512_DISPATCH
    const int mode = conv_algorithm();
    if (mode == kConvIm2col || mode == kConvWinograd || !cpu_has_avx512()) return false;
    if (g.stride != 1 || g.FW > kMaxFW || g.N == 0 || g.C == 0 || g.FN == 0 || g.OH < 1 || g.OW < 1) return false;
    const ImageBuffers b = image_buffers(g);
    if (4.0 * (b.x + std::max(b.flat, b.patches)) > kMaxImageBytes) return false;
    return mode == kConvDirect || double(g.C) * double(g.FH) * double(g.FW) <= double(kAutoMaxTaps);
#else
    (void)g;
    return false;
#endif
}

bool direct_pooled_applies(const ConvGeometry& g) {
    return direct_applies(g) && double(g.C) * double(g.FH) * double(g.FW) <= double(kMaxPooledTaps);
}

namespace {

// W (FN, K) -> Wt (K, FNp); b (FN,) -> bias (FNp,); filters [FN, FNp) zero.
DirectFilters padded_filters(const float* W, const float* b, const ConvGeometry& g, i64 fb, i64 FNp) {
    const i64 FN = g.FN, K = g.C * g.FH * g.FW;
    DirectFilters d;
    d.fb = fb, d.FNp = FNp;
    d.layout = flat(g);
    d.Wt.assign(static_cast<size_t>(K * d.FNp), 0.0f);
    d.bias.assign(static_cast<size_t>(d.FNp), 0.0f);
    for (i64 f = 0; f < FN; ++f) {
        for (i64 t = 0; t < K; ++t) d.Wt[static_cast<size_t>(t * d.FNp + f)] = W[f * K + t];
        d.bias[static_cast<size_t>(f)] = b ? b[f] : 0.0f;
    }
    return d;
}

i64 lanes_of(i64 FN) { return (FN + 15) / 16 * 16; }

}  // namespace

DirectFilters direct_filters(const float* W, const float* b, const ConvGeometry& g) {
    const auto [fb, FNp] = blocks_of(g.FN, kForwardMaxBlock);
    return padded_filters(W, b, g, fb, FNp);
}

void direct_forward_image(float* yn, const float* xn, const DirectFilters& d, bool relu, const ConvGeometry& g) {
#ifdef FL_AVX512_DISPATCH
    // yn (FN, OH, OW); xn (C, H, W)
    const DirectLayout& fl = d.layout;
    const i64 K = static_cast<i64>(fl.off.size());
    float* xf = scratch<0>(fl.xlen);         // (xlen,) padded image
    float* y = scratch<1>(d.FNp * fl.Pr);    // (FNp, Pr) flat outputs
    pad_image(xf, xn, g, fl);
    const ForwardBlock block = kForward[static_cast<size_t>(d.fb - 1)];
    for (i64 f0 = 0; f0 < d.FNp; f0 += d.fb)
        block(y + f0 * fl.Pr, fl.Pr, xf, d.Wt.data() + f0, d.FNp, d.bias.data() + f0, fl.off.data(), K, fl.Pr);
    unflatten(yn, y, fl.Pr, g, fl.Wp, relu);
#else
    (void)yn, (void)xn, (void)d, (void)relu, (void)g;
    throw std::logic_error("direct convolution without AVX-512");
#endif
}

bool direct_pools_in_registers(const ConvGeometry& g, const PoolGeometry& pg) {
    if (!direct_applies(g) || pg.PH != 2 || pg.PW != 2 || pg.stride != 2 || pg.pad != 0) return false;
    // int32 argmax in the registers; the pooled values and argmax of one image per thread.
    const double PP = double(pg.OH) * double(pg.OW), lanes = double(lanes_of(g.FN));
    return double(g.OH) * double(g.OW) < 2147483648.0 &&
           4.0 * (image_buffers(g).x + 2.0 * PP * lanes) <= kMaxImageBytes;
}

bool direct_forward_pooled(float* out, std::int32_t* argmax, const float* x, const float* W, const float* b,
                           const ConvGeometry& g, const PoolGeometry& pg) {
#ifdef FL_AVX512_DISPATCH
    // out, argmax (N, FN, POH, POW); x (N, C, H, W); W (FN, C, FH, FW); b (FN,)
    if (!direct_pools_in_registers(g, pg)) return false;
    const i64 FN = g.FN, POH = pg.OH, POW = pg.OW, PP = POH * POW, CHW = g.C * g.H * g.W, FNPP = FN * PP;
    if (g.N == 0 || FN == 0 || PP == 0) return true;
    const i64 L = lanes_of(FN), FV = L / 16;
    const DirectFilters d = padded_filters(W, b, g, 16, L);  // Wt (K, L)
    const DirectLayout& fl = d.layout;
    const i64 K = static_cast<i64>(fl.off.size()), Wp = fl.Wp;
    parallel_for(g.N, [&](i64 n) {
        float* xf = scratch<0>(fl.xlen);  // (xlen,) padded image
        float* val = scratch<1>(PP * L);  // (PP, L) pooled outputs, channel-last
        std::int32_t* idx = kept_buffer_aligned<std::int32_t, DirectScratch, 1>(PP * L);  // (PP, L) argmax
        pad_image(xf, x + n * CHW, g, fl);
        for (i64 v0 = 0; v0 < FV; v0 += kMaxPoolGroup) {
            const int FG = static_cast<int>(std::min<i64>(kMaxPoolGroup, FV - v0)), R = max_windows(FG);
            const auto& row = kPooledForward[static_cast<size_t>(FG - 1)];
            for (i64 ph = 0; ph < POH; ++ph)
                for (i64 pw = 0; pw < POW; pw += R) {
                    const i64 r = std::min<i64>(R, POW - pw), q = ph * POW + pw;
                    row[static_cast<size_t>(r - 1)](val + q * L + 16 * v0, idx + q * L + 16 * v0, L,
                                                    xf + 2 * ph * Wp + 2 * pw, Wp, d.Wt.data() + 16 * v0, L,
                                                    d.bias.data() + 16 * v0, fl.off.data(), K,
                                                    static_cast<std::int32_t>(2 * ph * g.OW + 2 * pw),
                                                    static_cast<std::int32_t>(g.OW));
                }
        }
        transpose::to_planar(out + n * FNPP, PP, POW, val, POW * L, L, FN, POH, POW);
        transpose::to_planar_int32(argmax + n * FNPP, PP, idx, L, FN, PP);
    }, direct_min_images(g));
    return true;
#else
    (void)out, (void)argmax, (void)x, (void)W, (void)b, (void)g, (void)pg;
    return false;
#endif
}

i64 direct_min_images(const ConvGeometry& g) {
    return min_items_macs(double(g.FN) * double(g.C) * double(g.FH) * double(g.FW) * double(g.OH) * double(g.OW));
}

void direct_forward(float* out, const float* x, const float* W, const float* b, bool relu, const ConvGeometry& g) {
    // out (N, FN, OH, OW); x (N, C, H, W); W (FN, C, FH, FW); b (FN,)
    const DirectFilters d = direct_filters(W, b, g);
    const i64 CHW = g.C * g.H * g.W, FNP = g.FN * g.OH * g.OW;
    parallel_for(g.N, [&](i64 n) { direct_forward_image(out + n * FNP, x + n * CHW, d, relu, g); },
                 direct_min_images(g));
}

bool direct_backward_pooled(float* dW, float* db, const float* dout, const float* x, const float* out,
                            const std::int32_t* argmax, i64 PP, const ConvGeometry& g) {
#ifdef FL_AVX512_DISPATCH
    // dW (FN, K) +=, db (FN,) +=; dout, out, argmax (N, FN, PP); x (N, C, H, W)
    const i64 N = g.N, FN = g.FN, P = g.OH * g.OW, CHW = g.C * g.H * g.W;
    if (N == 0 || FN == 0) return true;
    const DirectLayout fl = flat(g);
    const i64 K = static_cast<i64>(fl.off.size()), Kp = (K + 15) / 16 * 16;
    const PooledFilter kernel = kPooled[Kp / 16 - 1];
    const i64 G = std::min(N, kMaxGroups);
    std::vector<float> part(static_cast<size_t>(G * FN * Kp), 0.0f);  // (G, FN, Kp)
    std::vector<double> db_part(static_cast<size_t>(G * FN), 0.0);
    std::vector<char> finite(static_cast<size_t>(G), 1);
    const double work_per_group = double(FN) * double(PP + P) * double(Kp) * double(N) / double(G);
    parallel_for(G, [&](i64 gi) {
        float* xf = scratch<0>(fl.xlen);    // (xlen,) padded image
        float* colT = scratch<1>(P * Kp + 16);  // (P, Kp) patches, + slack
        float* m = scratch<2>(FN * PP);     // (FN, PP) dout where out > 0
        float* acc = part.data() + gi * FN * Kp;
        for (i64 n = N * gi / G; n < N * (gi + 1) / G; ++n) {
            // Checked here, on every thread, rather than the whole batch on the caller first:
            // nothing reaches dW or db before all the groups are done.
            if (!vm::all_finite_avx512(x + n * CHW, CHW)) {
                finite[static_cast<size_t>(gi)] = 0;
                return;
            }
            pad_image(xf, x + n * CHW, g, fl);
            build_patches(colT, Kp, xf, g, fl);
            vm::relu_mask(m, out + n * FN * PP, dout + n * FN * PP, FN * PP);
            for (i64 f = 0; f < FN; ++f) {
                const float* mf = m + f * PP;
                const std::int32_t* am = argmax + (n * FN + f) * PP;
                db_part[static_cast<size_t>(gi * FN + f)] += vm::sum_lanes(mf, PP);
                kernel(acc + f * Kp, colT, mf, am, PP);
            }
        }
    }, min_items_macs(work_per_group));
    if (!std::all_of(finite.begin(), finite.end(), [](char ok) { return ok != 0; })) return false;
    for (i64 f = 0; f < FN; ++f) {
        for (i64 t = 0; t < K; ++t) {
            float s = part[static_cast<size_t>(f * Kp + t)];
            for (i64 gi = 1; gi < G; ++gi) s += part[static_cast<size_t>((gi * FN + f) * Kp + t)];
            dW[f * K + t] += s;
        }
        double s = 0.0;
        for (i64 gi = 0; gi < G; ++gi) s += db_part[static_cast<size_t>(gi * FN + f)];
        db[f] += static_cast<float>(s);
    }
    return true;
#else
    (void)dW, (void)db, (void)dout, (void)x, (void)out, (void)argmax, (void)PP, (void)g;
    throw std::logic_error("direct convolution without AVX-512");
#endif
}

i64 direct_scratch_bytes(const ConvGeometry& g, int fused, i64 pooled_plane, i64 threads, bool dx, bool registers) {
    if (!direct_applies(g)) return 0;
    const ImageBuffers b = image_buffers(g);
    const double K = double(g.C) * double(g.FH) * double(g.FW), P = double(g.OH) * double(g.OW);
    const double FNp = double(blocks_of(g.FN, kForwardMaxBlock).second), Kp = std::ceil(K / 16) * 16;
    const double FN = double(g.FN), N = double(g.N), PP = double(pooled_plane), L = double(lanes_of(g.FN));
    const i64 T = std::max<i64>(1, threads), G = std::min(g.N, kMaxGroups);
    const bool pooled = fused >= 2 && !dx && direct_pooled_applies(g);  // the backward runs here too
    registers = registers && fused >= 2;
    // The threads a parallel_for over `items` uses: all (up to items), or one when there are
    // fewer than twice the minimum per thread the loop asks.
    auto team = [&](i64 items, i64 at_least) -> i64 { return items >= 2 * at_least ? std::min(T, items) : 1; };
    const i64 tf = team(g.N, direct_min_images(g));
    const i64 tb = pooled ? team(G, min_items_macs(FN * (PP + P) * Kp * N / double(G))) : 0;
    // Thread j keeps, per slot, the largest request of the passes it ran: the padded image;
    // the flat outputs, or pooling in the registers the pooled values and their int32 argmax
    // (forward), or the patches (backward); the masked dout (backward); and, pooled but not
    // in the registers, conv2d.cpp's per-image output that the forward pools.
    const double slack = double(kAlignSlack<float>);
    double per_thread = 0.0;
    for (i64 j = 0; j < std::max(tf, tb); ++j) {
        const bool f = j < tf, bw = j < tb;
        const double forward = registers ? PP * L : b.flat;
        per_thread += b.x + slack + std::max(f ? forward : 0.0, bw ? b.patches : 0.0) + slack;
        if (bw) per_thread += FN * PP + slack;
        if (registers && f) per_thread += PP * L + slack;
        if (pooled && !registers && f) per_thread += FN * P;
    }
    // The calling thread's: the prepared filters (forward); the dW partials and the db
    // partials in double (backward).
    const double filters = registers ? K * L + L : K * FNp + FNp;
    const double once = std::max(filters, pooled ? double(G) * FN * (Kp + 2.0) : 0.0);
    return static_cast<i64>((per_thread + once) * sizeof(float));
}

}  // namespace fl
