// Dropout with a counter-based generator, and the plain scaling used at inference.
//
// Each mask bit is a pure function of (seed, flat index): no generator state is carried
// from one element to the next, so the loop vectorises, any partition of it gives the same
// mask, and the NumPy oracle reproduces it bit for bit.
#include <algorithm>
#include <cmath>

#include "isa_dispatch.h"
#include "norm.h"

namespace fl {

namespace {

constexpr i64 kMinChunk = i64{1} << 15;
// Mask bytes produced before the output pass reads them back: small enough to stay in L1.
constexpr i64 kBlock = 2048;

// u(seed, i) >= p  <=>  (z >> 40) * 2^-24 >= p  <=>  (z >> 40) >= ceil(p * 2^24): the
// comparison becomes integer-only. p * 2^24 is exact in double (a power-of-two scaling) and
// 0 <= p < 1 keeps the threshold in [0, 2^24].
inline std::uint64_t keep_threshold(double p) { return static_cast<std::uint64_t>(std::ceil(std::ldexp(p, 24))); }

// mask[i] and out[i] for i in [i0, i1). The hash loop is integer-only and the output loop
// float-only: kept apart, each vectorises (one loop mixing 64-bit integer lanes with float
// lanes does not).
template <class T>
FL_ALWAYS_INLINE void dropout_span(T* __restrict out, std::uint8_t* __restrict mask, const T* __restrict x, i64 i0,
                                   i64 i1, std::uint64_t base, std::uint64_t threshold, T scale) {
    for (i64 b0 = i0; b0 < i1; b0 += kBlock) {
        const i64 b1 = std::min(b0 + kBlock, i1);
        for (i64 i = b0; i < b1; ++i) {
            // SplitMix64's finaliser of z = seed*2^32 + i (uint64 arithmetic wraps by definition).
            std::uint64_t z = base + static_cast<std::uint64_t>(i) + 0x9E3779B97F4A7C15ull;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            z ^= z >> 31;
            mask[i] = (z >> 40) >= threshold;
        }
        // x * mask * scale, in that order like the oracle, so a dropped inf gives NaN.
        for (i64 i = b0; i < b1; ++i) out[i] = x[i] * static_cast<T>(mask[i]) * scale;
    }
}

template <class T>
void span_default(T* out, std::uint8_t* mask, const T* x, i64 i0, i64 i1, std::uint64_t base,
                  std::uint64_t threshold, T scale) {
    dropout_span(out, mask, x, i0, i1, base, threshold, scale);
}

#ifdef FL_AVX512_DISPATCH
// The hash needs 64-bit lane multiplies (vpmullq, AVX-512DQ); baseline x86-64 has none, so
// there the hash stays scalar. Integer math and two multiplies per output: the same bits
// whichever version runs.
template <class T>
FL_TARGET_AVX512 void span_avx512(T* out, std::uint8_t* mask, const T* x, i64 i0, i64 i1, std::uint64_t base,
                                  std::uint64_t threshold, T scale) {
    dropout_span(out, mask, x, i0, i1, base, threshold, scale);
}
#endif

template <class T>
auto span_fn() {
#ifdef FL_AVX512_DISPATCH
    if (cpu_has_avx512()) return &span_avx512<T>;
#endif
    return &span_default<T>;
}

}  // namespace

template <class T>
void dropout_forward(T* out, std::uint8_t* mask, const T* x, i64 n, double p, std::uint32_t seed, double scale) {
    const std::uint64_t base = static_cast<std::uint64_t>(seed) << 32;
    const std::uint64_t threshold = keep_threshold(p);
    const T s = static_cast<T>(scale);
    const auto span = span_fn<T>();
    parallel_chunks(n, [&](i64 i0, i64 i1) { span(out, mask, x, i0, i1, base, threshold, s); }, kMinChunk);
}

template <class T>
void dropout_backward(T* dx, const T* dout, const std::uint8_t* mask, i64 n, double scale) {
    const T s = static_cast<T>(scale);
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        for (i64 i = i0; i < i1; ++i) dx[i] = dout[i] * static_cast<T>(mask[i]) * s;
    }, kMinChunk);
}

template <class T>
void scale_forward(T* out, const T* x, i64 n, double alpha) {
    const T a = static_cast<T>(alpha);
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        for (i64 i = i0; i < i1; ++i) out[i] = a * x[i];
    }, kMinChunk);
}

template void dropout_forward<float>(float*, std::uint8_t*, const float*, i64, double, std::uint32_t, double);
template void dropout_forward<double>(double*, std::uint8_t*, const double*, i64, double, std::uint32_t, double);
template void dropout_backward<float>(float*, const float*, const std::uint8_t*, i64, double);
template void dropout_backward<double>(double*, const double*, const std::uint8_t*, i64, double);
template void scale_forward<float>(float*, const float*, i64, double);
template void scale_forward<double>(double*, const double*, i64, double);

}  // namespace fl
