// Max pooling over NCHW planes, keeping the argmax for the backward pass.
#include <algorithm>
#include <limits>
#include <mutex>
#include <type_traits>

#include "isa_dispatch.h"
#include "pool.h"
#include "vecmath.h"

#ifdef FL_AVX512_DISPATCH
#include <immintrin.h>
#endif

namespace fl {

namespace {

// Whether v replaces the running maximum `best` of a window scanned in row-major order.
// np.argmax semantics: the first NaN wins and is never replaced; otherwise only a strictly
// larger value replaces, so ties keep the first maximum.
template <class T>
inline bool replaces(T v, T best) {
    return v > best || (v != v && best == best);
}

// Planes per thread below which waking a second thread costs more than it saves.
inline i64 min_planes(i64 per_plane) { return std::max<i64>(1, (i64{1} << 15) / std::max<i64>(per_plane, 1)); }

// x (H,W) -> out, argmax (OH,OW) for any window, stride and padding. Only in-bounds elements
// are scanned: padding is -inf and cannot beat a real element, and a window of all -inf
// reports its first real element, which is what the scan's starting point already is.
template <class T>
void maxpool_plane(T* out, std::int32_t* argmax, const T* x, const PoolGeometry& g) {
    for (i64 oh = 0; oh < g.OH; ++oh) {
        const i64 hs = oh * g.stride - g.pad;
        const i64 h0 = std::max<i64>(hs, 0), h1 = std::min(hs + g.PH, g.H);
        for (i64 ow = 0; ow < g.OW; ++ow) {
            const i64 ws = ow * g.stride - g.pad;
            const i64 w0 = std::max<i64>(ws, 0), w1 = std::min(ws + g.PW, g.W);
            const i64 o = oh * g.OW + ow;
            if (h0 >= h1 || w0 >= w1) {
                // Only for an empty plane (H or W is 0): the window is padding alone.
                out[o] = -std::numeric_limits<T>::infinity();
                argmax[o] = -1;
                continue;
            }
            i64 bi = h0 * g.W + w0;
            T best = x[bi];
            for (i64 h = h0; h < h1; ++h) {
                for (i64 w = w0; w < w1; ++w) {
                    const T v = x[h * g.W + w];
                    if (replaces(v, best)) {
                        best = v;
                        bi = h * g.W + w;
                    }
                }
            }
            out[o] = best;
            argmax[o] = static_cast<std::int32_t>(bi);
        }
    }
}

// The 2x2 stride-2 unpadded window of every CNN here, baseline build. Output rows are short
// (OW = 3..14 at the network shapes), so a vectorised loop over one row would spend its time
// in the scalar remainder, whose data-dependent branches mispredict on every other element
// (measured 2-7x slower than what follows). Instead the outputs of a run of planes are taken
// kTile at a time in flat order (out and argmax are contiguous across planes): (1) the four
// candidates of each window are copied into tile arrays (plain copies, no branches); (2) a
// loop of constant length kTile, which the compiler vectorises whole, selects the value and
// the position code k in 0..3 (row-major in the window) of each maximum, k being an integer
// of the value's width so that no lane widening is needed; (3) the tile's outputs and flat
// argmax indices are written out.
template <class T>
using Code = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;

// x (N*C, H, W) -> out, argmax (N*C, OH, OW), planes [p0, p1) only.
template <class T>
FL_ALWAYS_INLINE void maxpool_planes_2x2s2(T* __restrict out, std::int32_t* __restrict argmax, const T* __restrict x,
                                           i64 H, i64 W, i64 OH, i64 OW, i64 p0, i64 p1) {
    constexpr i64 kTile = 64;
    alignas(64) T a[kTile], b[kTile], c[kTile], d[kTile], best[kTile];
    alignas(64) Code<T> code[kTile];
    std::int32_t base[kTile];  // in-plane flat index of each window's top-left element
    const i64 total = (p1 - p0) * OH * OW;
    out += p0 * OH * OW;
    argmax += p0 * OH * OW;
    const T* xp = x + p0 * H * W;  // (H,W) the plane of the next window
    i64 oh = 0, ow = 0;
    for (i64 o0 = 0; o0 < total; o0 += kTile) {
        const i64 n = std::min(kTile, total - o0);
        for (i64 j = 0; j < n; ++j) {
            const i64 top = 2 * oh * W + 2 * ow;
            base[j] = static_cast<std::int32_t>(top);
            a[j] = xp[top];
            b[j] = xp[top + 1];
            c[j] = xp[top + W];
            d[j] = xp[top + W + 1];
            if (++ow == OW) {
                ow = 0;
                if (++oh == OH) {
                    oh = 0;
                    xp += H * W;
                }
            }
        }
        // Only the last tile is partial; its unused lanes are computed and dropped.
        for (i64 j = n; j < kTile; ++j) a[j] = b[j] = c[j] = d[j] = T(0);
        for (i64 j = 0; j < kTile; ++j) {
            T v = a[j];
            Code<T> k = 0;
            bool t = replaces(b[j], v);
            v = t ? b[j] : v;
            k = t ? 1 : k;
            t = replaces(c[j], v);
            v = t ? c[j] : v;
            k = t ? 2 : k;
            t = replaces(d[j], v);
            v = t ? d[j] : v;
            k = t ? 3 : k;
            best[j] = v;
            code[j] = k;
        }
        for (i64 j = 0; j < n; ++j) {
            out[o0 + j] = best[j];
            argmax[o0 + j] = base[j] + static_cast<std::int32_t>((code[j] >= 2 ? W : 0) + (code[j] & 1));
        }
    }
}

template <class T>
void maxpool_2x2s2_default(T* out, std::int32_t* argmax, const T* x, i64 H, i64 W, i64 OH, i64 OW, i64 p0, i64 p1) {
    maxpool_planes_2x2s2(out, argmax, x, H, W, OH, OW, p0, p1);
}

#ifdef FL_AVX512_DISPATCH
// AVX-512 build: one output row at a time straight from the two input rows, 16 (float) or 8
// (double) windows per step (measured 1.2-2x faster than the tiled baseline loop compiled for
// AVX-512 at the network shapes). Masked loads and stores cover the end of the row (they never
// touch memory past it), so short rows need neither a scalar remainder nor tile copies.
// The candidates a, b (top row) and c, d (bottom row) are de-interleaved from pairs with
// one permute each; the selection is replaces() on whole vectors (vm::replaces_mask).

// Flat argmax of 16 windows: top-left index tl plus W for the bottom row (k >= 2) and 1 for
// the right column (k odd).
FL_TARGET_AVX512 inline __m512i argmax_from_code(__m512i tl, __m512i k, __m512i W) {
    const __m512i one = _mm512_set1_epi32(1);
    __m512i idx = _mm512_add_epi32(tl, _mm512_and_si512(k, one));
    return _mm512_mask_add_epi32(idx, _mm512_cmpge_epi32_mask(k, _mm512_set1_epi32(2)), idx, W);
}

// x rows r0, r1 (W,) -> out, argmax (OW,); top = in-plane flat index of r0[0].
FL_TARGET_AVX512 void maxpool_row_2x2s2(float* out, std::int32_t* argmax, const float* r0, const float* r1, i64 W,
                                        i64 top, i64 OW) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i Wv = _mm512_set1_epi32(static_cast<std::int32_t>(W));
    for (i64 ow = 0; ow < OW; ow += 16) {
        const i64 n = std::min<i64>(16, OW - ow);
        // 2n input columns: the first min(2n, 16) from the low load, the rest from the high.
        const __mmask16 lo = static_cast<__mmask16>(n >= 8 ? 0xFFFFu : (1u << (2 * n)) - 1);
        const __mmask16 hi = static_cast<__mmask16>(n <= 8 ? 0u : n == 16 ? 0xFFFFu : (1u << (2 * n - 16)) - 1);
        const __mmask16 om = static_cast<__mmask16>(n == 16 ? 0xFFFFu : (1u << n) - 1);
        const __m512 t0 = _mm512_maskz_loadu_ps(lo, r0 + 2 * ow), t1 = _mm512_maskz_loadu_ps(hi, r0 + 2 * ow + 16);
        const __m512 u0 = _mm512_maskz_loadu_ps(lo, r1 + 2 * ow), u1 = _mm512_maskz_loadu_ps(hi, r1 + 2 * ow + 16);
        const __m512 b = _mm512_permutex2var_ps(t0, odd, t1);
        const __m512 c = _mm512_permutex2var_ps(u0, even, u1), d = _mm512_permutex2var_ps(u0, odd, u1);
        __m512 best = _mm512_permutex2var_ps(t0, even, t1);
        __m512i k = _mm512_setzero_si512();
        const __m512 cand[3] = {b, c, d};
        for (int j = 0; j < 3; ++j) {
            const __mmask16 m = vm::replaces_mask(cand[j], best);
            best = _mm512_mask_mov_ps(best, m, cand[j]);
            k = _mm512_mask_mov_epi32(k, m, _mm512_set1_epi32(j + 1));
        }
        _mm512_mask_storeu_ps(out + ow, om, best);
        const __m512i tl = _mm512_add_epi32(_mm512_set1_epi32(static_cast<std::int32_t>(top + 2 * ow)), even);
        _mm512_mask_storeu_epi32(argmax + ow, om, argmax_from_code(tl, k, Wv));
    }
}

FL_TARGET_AVX512 void maxpool_row_2x2s2(double* out, std::int32_t* argmax, const double* r0, const double* r1, i64 W,
                                        i64 top, i64 OW) {
    const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    const __m512i odd = _mm512_add_epi64(even, _mm512_set1_epi64(1));
    const __m512i even32 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i Wv = _mm512_set1_epi32(static_cast<std::int32_t>(W));
    for (i64 ow = 0; ow < OW; ow += 8) {
        const i64 n = std::min<i64>(8, OW - ow);
        const __mmask8 lo = static_cast<__mmask8>(n >= 4 ? 0xFFu : (1u << (2 * n)) - 1);
        const __mmask8 hi = static_cast<__mmask8>(n <= 4 ? 0u : n == 8 ? 0xFFu : (1u << (2 * n - 8)) - 1);
        const __mmask8 om = static_cast<__mmask8>(n == 8 ? 0xFFu : (1u << n) - 1);
        const __m512d t0 = _mm512_maskz_loadu_pd(lo, r0 + 2 * ow), t1 = _mm512_maskz_loadu_pd(hi, r0 + 2 * ow + 8);
        const __m512d u0 = _mm512_maskz_loadu_pd(lo, r1 + 2 * ow), u1 = _mm512_maskz_loadu_pd(hi, r1 + 2 * ow + 8);
        const __m512d b = _mm512_permutex2var_pd(t0, odd, t1);
        const __m512d c = _mm512_permutex2var_pd(u0, even, u1), d = _mm512_permutex2var_pd(u0, odd, u1);
        __m512d best = _mm512_permutex2var_pd(t0, even, t1);
        __m512i k = _mm512_setzero_si512();  // the codes in the low 8 int32 lanes
        const __m512d cand[3] = {b, c, d};
        for (int j = 0; j < 3; ++j) {
            const __mmask8 m = vm::replaces_mask(cand[j], best);
            best = _mm512_mask_mov_pd(best, m, cand[j]);
            k = _mm512_mask_mov_epi32(k, m, _mm512_set1_epi32(j + 1));
        }
        _mm512_mask_storeu_pd(out + ow, om, best);
        const __m512i tl = _mm512_add_epi32(_mm512_set1_epi32(static_cast<std::int32_t>(top + 2 * ow)), even32);
        _mm512_mask_storeu_epi32(argmax + ow, om, argmax_from_code(tl, k, Wv));
    }
}

// Rows of at most 8 windows (the 14x14 and 7x7 planes of deep_cnn) would leave most of the
// 16 float lanes idle: there the low 8 lanes take output row oh and the high 8 lanes row
// oh + 1. The same permutes apply, with the second load starting on the next pair of input
// rows instead of continuing the first. Planes x (H,W) -> out, argmax (OH,OW); OW <= 8.
FL_TARGET_AVX512 void maxpool_plane_2x2s2_narrow(float* out, std::int32_t* argmax, const float* x, i64 W, i64 OH,
                                                 i64 OW) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    // Top-left column of each lane's window, and 2W more in the high lanes (row oh + 1).
    const std::int32_t W2 = static_cast<std::int32_t>(2 * W);
    const __m512i step = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, W2, W2 + 2, W2 + 4, W2 + 6, W2 + 8, W2 + 10,
                                           W2 + 12, W2 + 14);
    const __m512i Wv = _mm512_set1_epi32(static_cast<std::int32_t>(W));
    const __mmask16 in = static_cast<__mmask16>((1u << (2 * OW)) - 1);  // 2*OW <= 16 columns
    const __mmask8 om = static_cast<__mmask8>((1u << OW) - 1);
    for (i64 oh = 0; oh < OH; oh += 2) {
        const bool second = oh + 1 < OH;
        const float* r0 = x + 2 * oh * W;  // (W,) top row of output row oh; r0 + 2W that of row oh + 1
        const __mmask16 in2 = second ? in : 0;
        const __m512 t0 = _mm512_maskz_loadu_ps(in, r0), u0 = _mm512_maskz_loadu_ps(in, r0 + W);
        const __m512 t1 = _mm512_maskz_loadu_ps(in2, second ? r0 + 2 * W : r0);
        const __m512 u1 = _mm512_maskz_loadu_ps(in2, second ? r0 + 3 * W : r0);
        const __m512 b = _mm512_permutex2var_ps(t0, odd, t1);
        const __m512 c = _mm512_permutex2var_ps(u0, even, u1), d = _mm512_permutex2var_ps(u0, odd, u1);
        __m512 best = _mm512_permutex2var_ps(t0, even, t1);
        __m512i k = _mm512_setzero_si512();
        const __m512 cand[3] = {b, c, d};
        for (int j = 0; j < 3; ++j) {
            const __mmask16 m = vm::replaces_mask(cand[j], best);
            best = _mm512_mask_mov_ps(best, m, cand[j]);
            k = _mm512_mask_mov_epi32(k, m, _mm512_set1_epi32(j + 1));
        }
        const i64 top = 2 * oh * W;
        const __m512i idx =
            argmax_from_code(_mm512_add_epi32(_mm512_set1_epi32(static_cast<std::int32_t>(top)), step), k, Wv);
        _mm512_mask_storeu_ps(out + oh * OW, om, best);
        _mm256_mask_storeu_epi32(argmax + oh * OW, om, _mm512_castsi512_si256(idx));
        if (second) {
            _mm256_mask_storeu_ps(out + (oh + 1) * OW, om, _mm512_maskz_extractf32x8_ps(0xFF, best, 1));
            _mm256_mask_storeu_epi32(argmax + (oh + 1) * OW, om, _mm512_extracti64x4_epi64(idx, 1));
        }
    }
}

template <class T>
FL_TARGET_AVX512 void maxpool_2x2s2_avx512(T* out, std::int32_t* argmax, const T* x, i64 H, i64 W, i64 OH, i64 OW,
                                           i64 p0, i64 p1) {
    for (i64 p = p0; p < p1; ++p) {
        const T* xp = x + p * H * W;                  // (H,W)
        T* o = out + p * OH * OW;                     // (OH,OW)
        std::int32_t* am = argmax + p * OH * OW;      // (OH,OW)
        if constexpr (std::is_same_v<T, float>) {
            if (OW <= 8) {
                maxpool_plane_2x2s2_narrow(o, am, xp, W, OH, OW);
                continue;
            }
        }
        for (i64 oh = 0; oh < OH; ++oh) {
            const i64 top = 2 * oh * W;
            maxpool_row_2x2s2(o + oh * OW, am + oh * OW, xp + top, xp + top + W, W, top, OW);
        }
    }
}
#endif

template <class T>
auto maxpool_2x2s2_fn() {
#ifdef FL_AVX512_DISPATCH
    if (cpu_has_avx512()) return &maxpool_2x2s2_avx512<T>;
#endif
    return &maxpool_2x2s2_default<T>;
}

}  // namespace

// Each (n, c) plane is independent and written by exactly one thread (max pooling is pure
// selection, so the partition could not change the bits anyway).
template <class T>
void maxpool2d_forward(T* out, std::int32_t* argmax, const T* x, const PoolGeometry& g) {
    const i64 in_plane = g.H * g.W, out_plane = g.OH * g.OW;
    const i64 min_per_thread = min_planes(in_plane + out_plane);
    if (g.PH == 2 && g.PW == 2 && g.stride == 2 && g.pad == 0) {
        const auto planes = maxpool_2x2s2_fn<T>();
        parallel_chunks(g.N * g.C, [&](i64 p0, i64 p1) { planes(out, argmax, x, g.H, g.W, g.OH, g.OW, p0, p1); },
                        min_per_thread);
        return;
    }
    parallel_for(g.N * g.C, [&](i64 p) {
        maxpool_plane(out + p * out_plane, argmax + p * out_plane, x + p * in_plane, g);
    }, min_per_thread);
}

#ifdef FL_AVX512_DISPATCH
// The whole 16-element steps of [i0, i1) folded into lo and hi with vector min and max.
// Returns where the scalar loop takes over.
FL_TARGET_AVX512 i64 argmax_range_avx512(const std::int32_t* argmax, i64 i0, i64 i1, std::int32_t& lo,
                                         std::int32_t& hi) {
    __m512i l = _mm512_set1_epi32(lo), h = _mm512_set1_epi32(hi);
    i64 i = i0;
    for (; i + 16 <= i1; i += 16) {
        const __m512i v = _mm512_loadu_si512(argmax + i);
        l = _mm512_min_epi32(l, v);
        h = _mm512_max_epi32(h, v);
    }
    lo = _mm512_reduce_min_epi32(l);
    hi = _mm512_reduce_max_epi32(h);
    return i;
}
#endif

void maxpool2d_argmax_range(const std::int32_t* argmax, i64 n, std::int32_t* lo, std::int32_t* hi) {
    std::int32_t l = 0, h = 0;
    if (n > 0) {
        l = h = argmax[0];
        std::mutex merge;
        // min and max are exact and order-free, so chunking cannot change the answer.
        parallel_chunks(n, [&](i64 i0, i64 i1) {
            std::int32_t cl = argmax[i0], ch = argmax[i0];
#ifdef FL_AVX512_DISPATCH
            if (cpu_has_avx512()) i0 = argmax_range_avx512(argmax, i0, i1, cl, ch);
#endif
            for (i64 i = i0; i < i1; ++i) {
                cl = argmax[i] < cl ? argmax[i] : cl;
                ch = argmax[i] > ch ? argmax[i] : ch;
            }
            std::lock_guard<std::mutex> lock(merge);
            l = std::min(l, cl);
            h = std::max(h, ch);
        }, i64{1} << 16);
    }
    *lo = l;
    *hi = h;
}

// With out[o] = x[argmax[o]] the gradient of every chosen element is the sum of the dout
// entries that chose it (windows overlap when stride < PH or PW):
//   dx[h*W + w] = sum over o with argmax[o] == h*W + w of dout[o]
// One thread owns a whole plane and adds in output order, so overlapping windows give the
// same bits for any thread count.
template <class T>
void maxpool2d_backward(T* dx, const T* dout, const std::int32_t* argmax, i64 N, i64 C, i64 H, i64 W,
                        i64 OH, i64 OW) {
    const i64 in_plane = H * W, out_plane = OH * OW;
    parallel_for(N * C, [&](i64 p) {
        T* d = dx + p * in_plane;                            // (H,W)
        const T* g = dout + p * out_plane;                   // (OH,OW)
        const std::int32_t* am = argmax + p * out_plane;     // (OH,OW)
        std::fill(d, d + in_plane, T(0));
        for (i64 o = 0; o < out_plane; ++o) d[am[o]] += g[o];
    }, min_planes(in_plane + out_plane));
}

template void maxpool2d_forward<float>(float*, std::int32_t*, const float*, const PoolGeometry&);
template void maxpool2d_forward<double>(double*, std::int32_t*, const double*, const PoolGeometry&);
template void maxpool2d_backward<float>(float*, const float*, const std::int32_t*, i64, i64, i64, i64, i64, i64);
template void maxpool2d_backward<double>(double*, const double*, const std::int32_t*, i64, i64, i64, i64, i64, i64);

}  // namespace fl
