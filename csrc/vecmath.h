// Element-wise transcendental functions written so that a plain loop over them vectorises.
//
// libm's exp/log1p/tanh are opaque calls: a loop that uses them runs one element at a time.
// These versions are straight-line arithmetic (range reduction, a polynomial, a scaling by
// 2^k built from the exponent bits) with no branch and no select between two computed values:
// under GCC's default -ftrapping-math such a select is not if-converted, which would stop
// vectorisation. Special values come out of the arithmetic itself: the argument is clamped to
// a range whose ends overflow to inf or underflow to 0 naturally, and a NaN argument flows
// through every step (its integer exponent is garbage, but NaN * anything is NaN).
//
// Accuracy, measured against a long-double reference over 1.2e7 arguments per function
// (subnormal results included), worst case in float and double alike: exp 1.0 ulp, expm1
// 1.1, log1p on [0, 1] 1.95, and built on them tanh 2.5, sigmoid 2.4, softplus 2.8 ulps
// (NumPy's own float32 exp reaches 2.4). The truncation error of every series is below 2^-25
// (float) or 2^-54 (double) relative on its reduced range; the coefficients are Taylor's.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common.h"
#include "isa_dispatch.h"

#ifdef FL_AVX512_DISPATCH
#include <immintrin.h>
#endif

// `#pragma omp simd` on a loop: the iterations are independent, vectorise without the
// run-time alias checks. Expands to nothing when OpenMP is off (no unknown-pragma warning).
#ifndef FL_SIMD
#ifdef _OPENMP
#define FL_SIMD _Pragma("omp simd")
#else
#define FL_SIMD
#endif
#endif

namespace fl::vm {

template <class T>
struct Traits;

template <>
struct Traits<float> {
    using U = std::uint32_t;
    static constexpr int mant = 23, bias = 127;
    static constexpr float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    static constexpr float log2e = 1.44269504088896341f;
    // ln 2 split so that k * ln2_hi is exact for |k| < 2^15 (Cody and Waite).
    static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    // exp: beyond these, the result is inf or 0 (the scaling below makes it so by itself).
    static constexpr float exp_max = 100.0f, exp_min = -110.0f;
    // expm1(y) is -1 to within half an ulp below this (used by tanh for y = -2|x|).
    static constexpr float expm1_min = -40.0f;
};

template <>
struct Traits<double> {
    using U = std::uint64_t;
    static constexpr int mant = 52, bias = 1023;
    static constexpr double shifter = 6755399441055744.0;  // 1.5 * 2^52
    static constexpr double log2e = 1.4426950408889634073599;
    static constexpr double ln2_hi = 6.93145751953125e-1, ln2_lo = 1.42860682030941723212e-6;
    static constexpr double exp_max = 720.0, exp_min = -760.0;
    static constexpr double expm1_min = -80.0;
};

template <class T>
inline typename Traits<T>::U bits_of(T x) {
    typename Traits<T>::U u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}

template <class T>
inline T from_bits(typename Traits<T>::U u) {
    T x;
    std::memcpy(&x, &u, sizeof x);
    return x;
}

// 2^k for an integer k in [1 - bias, bias], built directly as an exponent field. Unsigned
// arithmetic: for a NaN argument k is garbage and must not be undefined behaviour.
template <class T>
inline T pow2i(typename Traits<T>::U k) {
    using U = typename Traits<T>::U;
    return from_bits<T>(static_cast<U>(k + static_cast<U>(Traits<T>::bias)) << Traits<T>::mant);
}

// expm1(r) on |r| <= ln2/2 by its Taylor series: degree 7 leaves a relative truncation error
// of 0.35^7/8! < 2^-25 (float), degree 13 leaves 0.35^13/14! < 2^-56 (double).
inline float expm1_reduced(float r) {
    float q = 1.0f / 5040;
    q = q * r + 1.0f / 720;
    q = q * r + 1.0f / 120;
    q = q * r + 1.0f / 24;
    q = q * r + 1.0f / 6;
    q = q * r + 0.5f;
    return q * (r * r) + r;
}

inline double expm1_reduced(double r) {
    double q = 1.0 / 6227020800.0;
    q = q * r + 1.0 / 479001600.0;
    q = q * r + 1.0 / 39916800.0;
    q = q * r + 1.0 / 3628800.0;
    q = q * r + 1.0 / 362880.0;
    q = q * r + 1.0 / 40320.0;
    q = q * r + 1.0 / 5040.0;
    q = q * r + 1.0 / 720.0;
    q = q * r + 1.0 / 120.0;
    q = q * r + 1.0 / 24.0;
    q = q * r + 1.0 / 6.0;
    q = q * r + 0.5;
    return q * (r * r) + r;
}

// A value the optimiser cannot see through (it is read back through a volatile). Take it once,
// outside the loop. A select between two loop-invariant values vectorises; but when one of
// them is a known constant GCC folds the arithmetic that follows into each side (x * 1 -> x,
// or the whole of exp() at a clamp bound), which leaves a select between a value and a
// product computed on one side only, and that it will not if-convert under its default
// -ftrapping-math: the loop would stay scalar.
template <class T>
inline T opaque(T v) {
    volatile T r = v;
    return r;
}

// The clamp bounds of exp and expm1, opaque for the reason above.
template <class T>
struct Bounds {
    T exp_min, exp_max, expm1_min;
};

template <class T>
inline Bounds<T> bounds() {
    return {opaque(Traits<T>::exp_min), opaque(Traits<T>::exp_max), opaque(Traits<T>::expm1_min)};
}

// y = k ln2 + r with k an integer (its bits as U: k = bits(t) - bits(shifter)) and |r| <= ln2/2.
template <class T>
inline T reduce(T y, T& n, typename Traits<T>::U& k) {
    using C = Traits<T>;
    const T t = y * C::log2e + C::shifter;
    n = t - C::shifter;
    k = bits_of(t) - bits_of(C::shifter);
    return (y - n * C::ln2_hi) - n * C::ln2_lo;
}

// e^x. inf -> inf, -inf -> 0, NaN -> NaN, overflow -> inf, subnormal results rounded once.
template <class T>
inline T exp(T x, const Bounds<T>& b) {
    using C = Traits<T>;
    using U = typename C::U;
    // Written so that a NaN argument passes through both comparisons unchanged.
    T y = x < b.exp_min ? b.exp_min : x;
    y = y > b.exp_max ? b.exp_max : y;
    T n;
    U k;
    const T p = T(1) + expm1_reduced(reduce(y, n, k));
    // 2^k as 2^k1 * 2^k2 with k1 ~ k/2, so that both factors are normal over the clamped
    // range: the first product is exact, the second rounds once (into the subnormals if it
    // must, or to inf). k1 comes from rounding n/2 with the same shifter trick, which needs
    // no 64-bit arithmetic shift (SSE2 has none).
    const U k1 = bits_of(n * T(0.5) + C::shifter) - bits_of(C::shifter);
    return p * pow2i<T>(k1) * pow2i<T>(k - k1);
}

// e^y - 1 for y <= 0 (what tanh needs), accurate relative to the result also near y = 0.
// With y = k ln2 + r: e^y - 1 = 2^k expm1(r) + (2^k - 1); the first term is exact scaling,
// 2^k - 1 is exact while k >= -mant and rounds to -1 below, where e^y is under half an ulp.
template <class T>
inline T expm1_nonpositive(T y, const Bounds<T>& b) {
    using U = typename Traits<T>::U;
    y = y < b.expm1_min ? b.expm1_min : y;
    T n;
    U k;
    const T em = expm1_reduced(reduce(y, n, k));
    const T s = pow2i<T>(k);
    return em * s + (s - T(1));
}

// log(1 + z) for z in [0, 1] (softplus needs log1p(e^-|x|)). With s = z / (2 + z) in [0, 1/3],
// log(1 + z) = 2 atanh(s) = 2s (1 + s^2/3 + s^4/5 + ...): no cancellation anywhere. With
// w = s^2 <= 1/9 the series stops at w^6/13 (float) or w^15/31 (double): the first term left
// out, w^7/15 or w^16/33, is below 2^-26 or 2^-55 relative to the sum.
inline float log1p_unit(float z) {
    const float s = z / (2.0f + z);
    const float w = s * s;
    float q = 1.0f / 13;
    q = q * w + 1.0f / 11;
    q = q * w + 1.0f / 9;
    q = q * w + 1.0f / 7;
    q = q * w + 1.0f / 5;
    q = q * w + 1.0f / 3;
    return 2.0f * s + 2.0f * s * (q * w);
}

inline double log1p_unit(double z) {
    const double s = z / (2.0 + z);
    const double w = s * s;
    double q = 1.0 / 31;
    q = q * w + 1.0 / 29;
    q = q * w + 1.0 / 27;
    q = q * w + 1.0 / 25;
    q = q * w + 1.0 / 23;
    q = q * w + 1.0 / 21;
    q = q * w + 1.0 / 19;
    q = q * w + 1.0 / 17;
    q = q * w + 1.0 / 15;
    q = q * w + 1.0 / 13;
    q = q * w + 1.0 / 11;
    q = q * w + 1.0 / 9;
    q = q * w + 1.0 / 7;
    q = q * w + 1.0 / 5;
    q = q * w + 1.0 / 3;
    return 2.0 * s + 2.0 * s * (q * w);
}

// A double rounded to T as IEEE rounding does it (and as NumPy's cast does): beyond the
// largest finite float plus half an ulp the result is +-inf. Spelled out because a C++
// conversion of an out-of-range double to float is undefined behaviour.
template <class T>
inline T narrow(double v) {
    if constexpr (std::is_same_v<T, float>) {
        constexpr double overflow = 0x1.ffffffp127;  // FLT_MAX + half an ulp rounds to inf
        if (v >= overflow) return std::numeric_limits<float>::infinity();
        if (v <= -overflow) return -std::numeric_limits<float>::infinity();
    }
    return static_cast<T>(v);
}

// 1 / (1 + e^-x) with z = e^-|x| <= 1, so that nothing overflows: 1/(1+z) for x >= 0,
// z/(1+z) below (the oracle's formula). Selecting the numerator rather than the quotient
// keeps the select between an input-derived value and a constant, which vectorises.
template <class T>
inline T sigmoid(T x, const Bounds<T>& b) {
    const T z = exp(-std::fabs(x), b);
    return (x >= T(0) ? T(1) : z) / (T(1) + z);
}

// tanh(x) = -E / (2 + E) with E = expm1(-2|x|) in (-1, 0], signed like x: no cancellation
// for small |x| (E is accurate relative to itself) and no overflow for large |x|.
template <class T>
inline T tanh(T x, const Bounds<T>& b) {
    const T e = expm1_nonpositive(T(-2) * std::fabs(x), b);
    return std::copysign(-e / (T(2) + e), x);
}

#ifdef FL_AVX512_DISPATCH
// relu_mask's float loop 16 lanes at a time (a baseline build does 4): a select, so the same
// bits. Returns where the baseline loop takes over.
FL_TARGET_AVX512 inline i64 relu_mask_avx512(float* g, const float* out, const float* dout, i64 n) {
    const __m512 zero = _mm512_setzero_ps();
    i64 i = 0;
    for (; i + 16 <= n; i += 16) {
        const __mmask16 pos = _mm512_cmp_ps_mask(_mm512_loadu_ps(out + i), zero, _CMP_GT_OQ);
        _mm512_storeu_ps(g + i, _mm512_maskz_mov_ps(pos, _mm512_loadu_ps(dout + i)));
    }
    return i;
}

// The lanes of v that hold an infinity or a NaN: all exponent bits set.
FL_TARGET_AVX512 inline __mmask16 nonfinite_lanes(__m512 v) {
    const __m512i exponent = _mm512_set1_epi32(0x7F800000);
    return _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v), exponent), exponent);
}

// The lanes where v replaces the running maximum `best` of a pooling window scanned in
// order, np.argmax's rule (maxpool2d.cpp's replaces()): the first NaN wins and is never
// replaced, otherwise only a strictly larger value replaces. "Not v <= best" is v > best or
// either one NaN; masking it with "best is not NaN" leaves v > best or v NaN: two compares.
FL_TARGET_AVX512 inline __mmask16 replaces_mask(__m512 v, __m512 best) {
    return _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(best, best, _CMP_ORD_Q), v, best, _CMP_NLE_UQ);
}
FL_TARGET_AVX512 inline __mmask8 replaces_mask(__m512d v, __m512d best) {
    return _mm512_mask_cmp_pd_mask(_mm512_cmp_pd_mask(best, best, _CMP_ORD_Q), v, best, _CMP_NLE_UQ);
}

// One 2x2 window of a ReLU's outputs max-pooled, as relu_forward then maxpool2d_forward have
// it, 16 lanes at once: c[0..3] the window's pixels in row-major order before the ReLU; val =
// the pooled ReLU output, idx = its in-plane index (top for c[0], top + 1, top + down,
// top + down + 1). The maximum of the raw values comes first, then the ReLU: where that
// maximum is <= 0 (no NaN among the four) all four ReLU outputs are 0 and the scan keeps the
// first pixel; elsewhere the ReLU leaves the winner, and every value that could tie with it,
// as they are.
FL_TARGET_AVX512 inline void relu_max2x2(__m512& val, __m512i& idx, const __m512 (&c)[4], std::int32_t top,
                                         std::int32_t down) {
    const std::int32_t at[4] = {top, top + 1, top + down, top + down + 1};
    __m512 best = c[0];
    __m512i id = _mm512_set1_epi32(top);
    for (int k = 1; k < 4; ++k) {
        const __mmask16 m = replaces_mask(c[k], best);
        best = _mm512_mask_mov_ps(best, m, c[k]);
        id = _mm512_mask_mov_epi32(id, m, _mm512_set1_epi32(at[k]));
    }
    const __mmask16 off = _mm512_cmp_ps_mask(best, _mm512_setzero_ps(), _CMP_LE_OQ);
    val = _mm512_mask_mov_ps(best, off, _mm512_setzero_ps());
    idx = _mm512_mask_mov_epi32(id, off, _mm512_set1_epi32(top));
}

// Whether all of x (n,) is finite (no infinity, no NaN): the exponent bits of every value,
// 16 at a time, the last step masked. For the AVX-512-only paths that must hand an input with
// a non-finite value to a dense sum (conv_direct.cpp, conv_pooled.cpp).
FL_TARGET_AVX512 inline bool all_finite_avx512(const float* x, i64 n) {
    __mmask16 bad = 0;
    for (i64 k = 0; k < n; k += 16) {
        const __mmask16 m = static_cast<__mmask16>(n - k >= 16 ? 0xFFFF : (1u << (n - k)) - 1u);
        bad |= nonfinite_lanes(_mm512_maskz_loadu_ps(m, x + k));  // the masked-off lanes are 0
    }
    return bad == 0;
}
#endif

// g = dout where out > 0, else 0: the gradient through a ReLU whose output was out. dout is
// read unconditionally so the select if-converts and the loop vectorises; written as
// `out > 0 ? dout[i] : 0` it stays a scalar loop with a branch per element, which random
// signs mispredict half the time (measured 5x slower).
template <class T>
inline void relu_mask(T* g, const T* out, const T* dout, i64 n) {
    i64 start = 0;
#ifdef FL_AVX512_DISPATCH
    if constexpr (std::is_same_v<T, float>) {
        if (cpu_has_avx512()) start = relu_mask_avx512(g, out, dout, n);
    }
#endif
    FL_SIMD for (i64 i = start; i < n; ++i) {
        const T d = dout[i];
        g[i] = out[i] > T(0) ? d : T(0);
    }
}

// Sum of x[0..n) in double over kSumLanes interleaved partial sums (element i goes to lane
// i % kSumLanes), added in lane order at the end. One running double sum is a chain of
// dependent adds, 4 cycles per element; the lanes vectorise, and the order is fixed by n
// alone, so the result does not depend on how the caller split its work.
constexpr i64 kSumLanes = 16;

#ifdef FL_AVX512_DISPATCH
// The float body of sum_lanes with the 16 lanes in two zmm registers of doubles: the same
// additions in the same order as the baseline's, so the same bits, in an eighth of the
// instructions (a baseline build converts two floats at a time).
FL_TARGET_AVX512 inline i64 sum_lanes_avx512(double* lane, const float* x, i64 n) {
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    i64 i = 0;
    for (; i + kSumLanes <= n; i += kSumLanes) {
        const __m512 v = _mm512_loadu_ps(x + i);
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
    }
    _mm512_storeu_pd(lane, lo);
    _mm512_storeu_pd(lane + 8, hi);
    return i;
}
#endif

template <class T>
inline double sum_lanes(const T* x, i64 n) {
    double lane[kSumLanes] = {};
    i64 i = 0;
#ifdef FL_AVX512_DISPATCH
    if constexpr (std::is_same_v<T, float>) {
        if (cpu_has_avx512()) i = sum_lanes_avx512(lane, x, n);
    }
#endif
    for (; i + kSumLanes <= n; i += kSumLanes)
        FL_SIMD for (i64 l = 0; l < kSumLanes; ++l) lane[l] += static_cast<double>(x[i + l]);
    for (i64 l = 0; i + l < n; ++l) lane[l] += static_cast<double>(x[i + l]);
    double s = 0.0;
    for (i64 l = 0; l < kSumLanes; ++l) s += lane[l];
    return s;
}

// One row of softmax: m = max_k z_k, y_k = exp(z_k - m) / sum_j exp(z_j - m), the sum
// accumulated in double in index order. Returns the sum and sets zmax = m, for a caller that
// also wants log-sum-exp = m + log(sum). Subtracting m keeps every exponent <= 0; a row
// holding NaN, +inf or only -inf gives NaN (z - m or the sum is NaN), and the maximum may
// skip a NaN since the sum catches it.
template <class T>
inline double softmax_row(T* y, const T* z, i64 K, const Bounds<T>& bounds, T& zmax) {
    T m = z[0];
    for (i64 k = 1; k < K; ++k) m = z[k] > m ? z[k] : m;
    FL_SIMD
    for (i64 k = 0; k < K; ++k) y[k] = exp(z[k] - m, bounds);
    double sum = 0.0;
    for (i64 k = 0; k < K; ++k) sum += static_cast<double>(y[k]);
    const T s = static_cast<T>(sum);
    FL_SIMD
    for (i64 k = 0; k < K; ++k) y[k] = y[k] / s;
    zmax = m;
    return sum;
}

}  // namespace fl::vm
