// The sparse backward of convolution + ReLU + max pooling (see conv_pooled.h for the math and
// the dims legend).
//
// Why. Below a 2x2 pooling three quarters of the convolution's output gradient are zeros by
// construction, and after the ReLU about half of the rest: the dense backward (im2col's GEMMs
// or Winograd's transforms) multiplies all of them. deep_cnn's pooled layers spent 2.4 to
// 4.5 ms each in that backward.
//
// Layout. Each image is copied channel-last (transpose.h) into a zero-padded buffer xc
// (Hp*Wp, Cp), 64-byte aligned, with zeros in the channel lanes [C, Cp). An entry's corner
// pixel (oh*s, ow*s) of the padded plane is an offset into xc taken from a per-call table, tap
// t = (i, j) adds the fixed offset (i*Wp + j)*Cp, and channel vector v adds 16*v: every load is
// an aligned vector with no bounds test, whatever the stride, padding or filter size.
//
// dW. Per filter, the entries (corner offset, m) with m != 0 are listed first, 16 pooled
// outputs at a time compressed in registers (m's signs are random: a branch per output would
// be mispredicted half the time). Then, for each channel vector and each block of up to 12
// taps, the block's accumulators stay in registers over all the filter's entries: one
// broadcast of m and one load plus one FMA per tap; the block's taps are independent chains,
// which hides the FMA latency. The partial sums are kept per fixed image group (as conv2d.cpp
// does) and added group by group at the end: the same bits for any thread count.
//
// dx. The same entries, sorted by output pixel (a counting sort that keeps the filter order),
// add m * W[f][c][t] (W rearranged once per call to (FN, T, Cp), zero lanes past C) at the
// pixels that output pixel read: per pixel and tap block the sums stay in registers over its
// entries, then one aligned read-modify-write of dxc per tap and channel vector. Pixels are
// visited so that consecutive ones share no input pixel. Then dx_n is dxc's interior
// transposed back to (C, H, W).
//
// db is each filter's sum of m in double, as the other paths sum it.
#include "conv_pooled.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

#include "isa_dispatch.h"
#include "transpose.h"
#include "vecmath.h"

#ifdef FL_AVX512_DISPATCH
#include <immintrin.h>
#endif

namespace fl {

namespace {

constexpr i64 kMaxGroups = 8;     // image groups carrying dW partials, as in conv2d.cpp
constexpr i64 kMaxTapBlock = 12;  // accumulators held in registers at once
// One image's per-thread buffers stay under this, or the layer runs the dense backward.
constexpr double kMaxImageBytes = double(i64{16} << 20);

struct Layout {
    i64 Cp = 0, CV = 0, T = 0, Wp = 0;
    i64 pixels = 0;          // floats of xc / dxc: Hp*Wp*Cp
    std::vector<i64> toff;   // (T,) tap t = (i, j): (i*Wp + j)*Cp, its offset in xc or dxc
    std::vector<i64> rows;   // (T,) t*Cp: tap t's offset in one filter (T, Cp) of dW or Wr
    std::vector<i64> corner;  // (P,) output pixel p = (oh, ow): (oh*s*Wp + ow*s)*Cp
    std::vector<i64> order;   // (P,) the output pixels in the order dx visits them (below)
};

Layout layout(const ConvGeometry& g) {
    Layout L;
    L.Cp = (g.C + 15) / 16 * 16;
    L.CV = L.Cp / 16;
    L.T = g.FH * g.FW;
    L.Wp = g.W + 2 * g.pad;
    L.pixels = (g.H + 2 * g.pad) * L.Wp * L.Cp;
    L.toff.reserve(static_cast<size_t>(L.T));
    for (i64 i = 0; i < g.FH; ++i)
        for (i64 j = 0; j < g.FW; ++j) L.toff.push_back((i * L.Wp + j) * L.Cp);
    for (i64 t = 0; t < L.T; ++t) L.rows.push_back(t * L.Cp);
    L.corner.reserve(static_cast<size_t>(g.OH * g.OW));
    for (i64 oh = 0; oh < g.OH; ++oh)
        for (i64 ow = 0; ow < g.OW; ++ow) L.corner.push_back((oh * g.stride * L.Wp + ow * g.stride) * L.Cp);
    // dx visits ow, ow + step, ... within a row, phase by phase, so that two pixels in a row
    // never share an input pixel: their read-modify-writes of dxc do not wait on each other.
    const i64 step = (g.FW + g.stride - 1) / g.stride;
    L.order.reserve(L.corner.size());
    for (i64 phase = 0; phase < step; ++phase)
        for (i64 oh = 0; oh < g.OH; ++oh)
            for (i64 ow = phase; ow < g.OW; ow += step) L.order.push_back(oh * g.OW + ow);
    return L;
}

// One image's per-thread floats, from doubles: this runs before anything is known to fit.
struct ImageBuffers {
    double pixels;   // xc, and dxc with dx: Hp*Wp*Cp each
    double entries;  // FN*PP: the masked dout, and the entries' m (floats) and offsets (int64)
};

ImageBuffers image_buffers(const ConvGeometry& g, i64 PP) {
    const double Cp = std::ceil(double(g.C) / 16) * 16;
    return {double(g.H + 2 * g.pad) * double(g.W + 2 * g.pad) * Cp, double(g.FN) * double(PP)};
}

#ifdef FL_AVX512_DISPATCH

// This thread's buffer of n elements for slot Slot, kept across calls, on a 64-byte boundary.
struct PooledScratch;
template <class T, int Slot>
T* scratch(i64 n) {
    return kept_buffer_aligned<T, PooledScratch, Slot>(n);
}

// xc (Hp*Wp, Cp) = image xn (C, H, W) channel-last, zero-padded around and past C. Returns
// whether every value of xn is finite.
FL_TARGET_AVX512 bool to_channel_last(float* xc, const float* xn, const ConvGeometry& g, const Layout& L) {
    std::memset(xc, 0, static_cast<size_t>(L.pixels) * sizeof(float));
    return transpose::to_channel_last_checked(xc + (g.pad * L.Wp + g.pad) * L.Cp, L.Wp * L.Cp, L.Cp, xn, g.H * g.W,
                                              g.W, g.C, g.H, g.W);
}

// Appends to the entries from em[ne], epos[ne], eoff[ne] those of one filter with m != 0 (a
// NaN is kept): m, the output pixel p = am[q] and its corner offset corner[p]; returns the new
// count. 16 pooled outputs at a time, compressed in registers and stored whole (a compressing
// store to memory is slow on some CPUs): a store from entry ne reaches at most entry ne + 15,
// and ne counts at most the outputs read before, so nothing lands past f*PP + q + 16 <= FN*PP.
FL_TARGET_AVX512 i64 append_entries(float* em, i64* epos, i64* eoff, i64 ne, const float* mf, const std::int32_t* am,
                                    i64 PP, const i64* corner) {
    const __m512 zero = _mm512_setzero_ps();
    i64 q = 0;
    for (; q + 16 <= PP; q += 16) {
        const __m512 mv = _mm512_loadu_ps(mf + q);
        const __mmask16 keep = _mm512_cmp_ps_mask(mv, zero, _CMP_NEQ_UQ);
        const __mmask8 lo = static_cast<__mmask8>(keep), hi = static_cast<__mmask8>(keep >> 8);
        const __m512i a = _mm512_loadu_si512(am + q);  // 16 int32 indices, widened 8 at a time
        const __m512i p0 = _mm512_maskz_compress_epi64(lo, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(a)));
        const __m512i p1 = _mm512_maskz_compress_epi64(hi, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a, 1)));
        const i64 n0 = __builtin_popcount(lo), n1 = __builtin_popcount(hi);
        const __mmask8 g0 = static_cast<__mmask8>((1u << n0) - 1u), g1 = static_cast<__mmask8>((1u << n1) - 1u);
        _mm512_storeu_ps(em + ne, _mm512_maskz_compress_ps(keep, mv));
        _mm512_storeu_si512(epos + ne, p0);
        _mm512_storeu_si512(eoff + ne, _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), g0, p0, corner, 8));
        _mm512_storeu_si512(epos + ne + n0, p1);
        _mm512_storeu_si512(eoff + ne + n0, _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), g1, p1, corner, 8));
        ne += n0 + n1;
    }
    for (; q < PP; ++q) {
        em[ne] = mf[q];
        epos[ne] = am[q];
        eoff[ne] = corner[am[q]];
        ne += !(mf[q] == 0.0f);
    }
    return ne;
}

// A run of entries [k0, k1) that add into one place, at offset dst from the destination.
struct Segment {
    i64 dst, k0, k1;
};

// For each segment: dst + seg.dst + dtoff[t] (16 floats each, t < TB) += the sum over its
// entries k of m[k] * src[off[k] + stoff[t]]. The TB sums stay in registers over the
// segment's entries, independent chains that hide the FMA latency, and each destination
// vector is read and written once per segment. dW: src the channel-last image, off the
// entries' corner pixels, stoff the taps' offsets in it; a segment per filter, at its partial.
// dx: src the rearranged filters, off the entries' filters, stoff the taps' offsets in one
// filter; a segment per output pixel, at its corner in the gradient image, dtoff the taps
// there. The loop over segments is inside, so the offsets are set up once per call.
template <int TB>
FL_TARGET_AVX512 void sparse_block(float* dst, const i64* dtoff, const float* src, const i64* stoff, const i64* off,
                                   const float* m, const Segment* seg, i64 ns) {
    i64 d[TB], so[TB];
#pragma GCC unroll 12
    for (int t = 0; t < TB; ++t) d[t] = dtoff[t], so[t] = stoff[t];
    for (i64 si = 0; si < ns; ++si) {
        const i64 k0 = seg[si].k0, k1 = seg[si].k1;
        if (k0 == k1) continue;
        __m512 a[TB];
#pragma GCC unroll 12
        for (int t = 0; t < TB; ++t) a[t] = _mm512_setzero_ps();
        for (i64 k = k0; k < k1; ++k) {
            const float* base = src + off[k];
            const __m512 mv = _mm512_set1_ps(m[k]);
#pragma GCC unroll 12
            for (int t = 0; t < TB; ++t) a[t] = _mm512_fmadd_ps(mv, _mm512_load_ps(base + so[t]), a[t]);
        }
        float* out = dst + seg[si].dst;
#pragma GCC unroll 12
        for (int t = 0; t < TB; ++t) _mm512_store_ps(out + d[t], _mm512_add_ps(_mm512_load_ps(out + d[t]), a[t]));
    }
}

using SparseBlock = void (*)(float*, const i64*, const float*, const i64*, const i64*, const float*, const Segment*,
                             i64);

template <std::size_t... I>
constexpr std::array<SparseBlock, sizeof...(I)> block_table(std::index_sequence<I...>) {
    return {&sparse_block<int(I) + 1>...};
}
constexpr auto kBlock = block_table(std::make_index_sequence<kMaxTapBlock>{});

// sparse_block over all T taps and CV channel vectors, the taps in the fewest blocks of at
// most kMaxTapBlock, as even as possible.
FL_TARGET_AVX512 void sparse_taps(float* dst, const i64* dtoff, const float* src, const i64* stoff, const i64* off,
                                  const float* m, const Segment* seg, i64 ns, const Layout& L) {
    const i64 T = L.T, nb = (T + kMaxTapBlock - 1) / kMaxTapBlock;
    for (i64 v = 0; v < L.CV; ++v)
        for (i64 bi = 0; bi < nb; ++bi) {
            const i64 t0 = T * bi / nb, t1 = T * (bi + 1) / nb;
            kBlock[static_cast<size_t>(t1 - t0 - 1)](dst + 16 * v, dtoff + t0, src + 16 * v, stoff + t0, off, m, seg, ns);
        }
}

#endif  // FL_AVX512_DISPATCH

}  // namespace

bool pooled_backward_applies(const ConvGeometry& g, i64 PP) {
#ifdef FL_AVX512_DISPATCH
    const int mode = conv_algorithm();
    if (mode == kConvIm2col || mode == kConvWinograd || !cpu_has_avx512()) return false;
    if (g.N == 0 || g.C == 0 || g.FN == 0 || g.OH < 1 || g.OW < 1 || PP < 1) return false;
    const ImageBuffers b = image_buffers(g, PP);
    if (4.0 * (2.0 * b.pixels + 3.0 * b.entries) > kMaxImageBytes) return false;
    const double Cp = std::ceil(double(g.C) / 16) * 16;
    return mode == kConvDirect || 2.0 * double(PP) * Cp <= double(g.OH) * double(g.OW) * double(g.C);
#else
    (void)g, (void)PP;
    return false;
#endif
}

bool pooled_backward(float* dx, float* dW, float* db, const float* dout, const float* x, const float* W,
                     const float* out, const std::int32_t* argmax, i64 PP, const ConvGeometry& g) {
#ifdef FL_AVX512_DISPATCH
    // dx (N, C, H, W) or null; dW (FN, C, FH, FW), db (FN,) +=; dout, out, argmax (N, FN, PP);
    // x (N, C, H, W); W (FN, C, FH, FW)
    const i64 N = g.N, C = g.C, FN = g.FN, CHW = C * g.H * g.W;
    if (N == 0 || FN == 0) {
        if (dx) std::memset(dx, 0, static_cast<size_t>(N * CHW) * sizeof(float));
        return true;
    }
    const Layout L = layout(g);
    const i64 T = L.T, Cp = L.Cp, FNT = FN * T;
    if (dx && !vm::all_finite_avx512(W, FNT * C)) return false;
    // The calling thread's buffers, kept across calls (slots past the ones the loop's threads
    // use; the caller is one of them), so that no call pays for fresh pages:
    // Wr (FN, T, Cp): W[f][c][t] at Wr[(f*T + t)*Cp + c], zeros past C. 64-byte aligned.
    float* Wr = nullptr;
    if (dx) {
        Wr = scratch<float, 10>(FNT * Cp);
        if (Cp != C) std::memset(Wr, 0, static_cast<size_t>(FNT * Cp) * sizeof(float));
        for (i64 f = 0; f < FN; ++f)
            for (i64 c = 0; c < C; ++c)
                for (i64 t = 0; t < T; ++t) Wr[(f * T + t) * Cp + c] = W[(f * C + c) * T + t];
    }
    const i64 G = std::min(N, kMaxGroups), P = g.OH * g.OW;
    float* part = scratch<float, 11>(G * FNT * Cp);  // (G, FN, T, Cp), each group zeroes its own
    std::vector<double> db_part(static_cast<size_t>(G * FN), 0.0);
    std::vector<char> finite(static_cast<size_t>(G), 1);
    const double macs_per_group =
        double(FN) * double(PP) * double(T) * double(Cp) * (dx ? 2.0 : 1.0) * double(N) / double(G);
    parallel_for(G, [&](i64 gi) {
        float* xc = scratch<float, 0>(L.pixels);  // (Hp*Wp, Cp)
        float* m = scratch<float, 1>(FN * PP);    // (FN, PP) dout where out > 0
        float* em = scratch<float, 2>(FN * PP);   // entries' m, filter by filter
        i64* eoff = scratch<i64, 3>(FN * PP);     // entries' corner offsets into xc
        i64* epos = scratch<i64, 4>(FN * PP);     // entries' output pixels
        i64* start = scratch<i64, 5>(FN + 1);     // filter f's entries: [start[f], start[f+1])
        Segment* seg = kept_buffer<Segment, PooledScratch>(std::max(FN, P));  // dW's filters, dx's pixels
        float* acc = part + gi * FNT * Cp;
        std::memset(acc, 0, static_cast<size_t>(FNT * Cp) * sizeof(float));
        for (i64 n = N * gi / G; n < N * (gi + 1) / G; ++n) {
            if (!to_channel_last(xc, x + n * CHW, g, L)) {
                finite[static_cast<size_t>(gi)] = 0;
                return;
            }
            vm::relu_mask(m, out + n * FN * PP, dout + n * FN * PP, FN * PP);
            i64 ne = 0;
            for (i64 f = 0; f < FN; ++f) {
                const float* mf = m + f * PP;
                const std::int32_t* am = argmax + (n * FN + f) * PP;
                db_part[static_cast<size_t>(gi * FN + f)] += vm::sum_lanes(mf, PP);
                start[f] = ne;
                ne = append_entries(em, epos, eoff, ne, mf, am, PP, L.corner.data());
            }
            start[FN] = ne;
            for (i64 f = 0; f < FN; ++f) seg[f] = {f * T * Cp, start[f], start[f + 1]};
            sparse_taps(acc, L.rows.data(), xc, L.toff.data(), eoff, em, seg, FN, L);
            if (!dx) continue;
            // The entries again, by output pixel (a counting sort that keeps filter order):
            // pixel p's are [end[p-1], end[p]), each its filter's offset into Wr and its m.
            i64* end = scratch<i64, 6>(P + 1);
            i64* woff = scratch<i64, 7>(ne);
            float* wm = scratch<float, 8>(ne);
            std::fill(end, end + P + 1, i64{0});
            for (i64 k = 0; k < ne; ++k) ++end[epos[k] + 1];
            for (i64 p = 0; p < P; ++p) end[p + 1] += end[p];
            for (i64 f = 0; f < FN; ++f)
                for (i64 k = start[f]; k < start[f + 1]; ++k) {
                    const i64 slot = end[epos[k]]++;
                    woff[slot] = f * T * Cp;
                    wm[slot] = em[k];
                }
            for (i64 o = 0; o < P; ++o) {
                const i64 p = L.order[static_cast<size_t>(o)];
                seg[o] = {L.corner[static_cast<size_t>(p)], p == 0 ? 0 : end[p - 1], end[p]};
            }
            float* dxc = scratch<float, 9>(L.pixels);  // (Hp*Wp, Cp)
            std::memset(dxc, 0, static_cast<size_t>(L.pixels) * sizeof(float));
            sparse_taps(dxc, L.toff.data(), Wr, L.rows.data(), woff, wm, seg, P, L);
            transpose::to_planar(dx + n * CHW, g.H * g.W, g.W, dxc + (g.pad * L.Wp + g.pad) * L.Cp, L.Wp * L.Cp, L.Cp, C,
                          g.H, g.W);  // dx_n = dxc's interior
        }
    }, min_items_macs(macs_per_group));
    if (!std::all_of(finite.begin(), finite.end(), [](char ok) { return ok != 0; })) return false;
    // The groups' partials added in group order into the first, along its contiguous (f, t, c)
    // layout and on all threads; then into dW, transposed to (f, c, t).
    const i64 FNTC = FNT * Cp;
    parallel_chunks(FNTC, [&](i64 a, i64 e) {
        for (i64 gi = 1; gi < G; ++gi) {
            const float* src = part + gi * FNTC;
            FL_SIMD for (i64 k = a; k < e; ++k) part[k] += src[k];
        }
    });
    for (i64 f = 0; f < FN; ++f) {
        for (i64 c = 0; c < C; ++c)
            for (i64 t = 0; t < T; ++t) dW[(f * C + c) * T + t] += part[(f * T + t) * Cp + c];
        double s = 0.0;
        for (i64 gi = 0; gi < G; ++gi) s += db_part[static_cast<size_t>(gi * FN + f)];
        db[f] += static_cast<float>(s);
    }
    return true;
#else
    (void)dx, (void)dW, (void)db, (void)dout, (void)x, (void)W, (void)out, (void)argmax, (void)PP, (void)g;
    throw std::logic_error("sparse pooled backward without AVX-512");
#endif
}

i64 pooled_backward_scratch_bytes(const ConvGeometry& g, i64 PP, bool dx, i64 threads) {
    if (!pooled_backward_applies(g, PP)) return 0;
    const ImageBuffers b = image_buffers(g, PP);
    const double Cp = std::ceil(double(g.C) / 16) * 16, FNT = double(g.FN) * double(g.FH) * double(g.FW);
    const double P = double(g.OH) * double(g.OW), E = b.entries;
    const i64 G = std::min(g.N, kMaxGroups);
    const double macs_per_group = FNT * double(PP) * Cp * (dx ? 2.0 : 1.0) * double(g.N) / double(G);
    const i64 team = G >= 2 * min_items_macs(macs_per_group) ? std::min(std::max<i64>(1, threads), G) : 1;
    // Per thread, in floats, as scratch() asks (n + 15 floats, or n + 7 int64 of two floats
    // each, for the alignment): xc, the masked dout, the entries' m, corner offsets and pixels, the filters'
    // entry ranges, the segments (max(FN, P)); with dx also the pixels' entry ranges, the
    // entries by pixel (filter offsets and m) and dxc. The entries are counted at their most,
    // FN*PP.
    auto f32 = [](double n) { return n + double(kAlignSlack<float>); };
    auto i64s = [](double n) { return 2 * (n + double(kAlignSlack<i64>)); };
    double per_thread = f32(b.pixels) + f32(E) + f32(E) + i64s(E) + i64s(E) + i64s(double(g.FN) + 1) +
                        6.0 * std::max(double(g.FN), P);  // + the segments, three int64 each
    if (dx) per_thread += i64s(P + 1) + i64s(E) + f32(E) + f32(b.pixels);
    // The calling thread: the dW partials, the db partials in double, the layout's tables
    // (int64: the corners and dx's pixel order, two tap tables) and, with dx, the rearranged
    // filters.
    const double once = f32(double(G) * FNT * Cp) + 2.0 * double(G) * double(g.FN) +
                        2.0 * (2.0 * P + 2.0 * double(g.FH) * double(g.FW)) + (dx ? f32(FNT * Cp) : 0.0);
    return static_cast<i64>((double(team) * per_thread + once) * sizeof(float));
}

}  // namespace fl
