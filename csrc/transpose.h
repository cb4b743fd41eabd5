// Between planar images (C, H, W) and channel-last ones (H, W, C), for the convolution paths
// that work channel-last (winograd.cpp, conv_pooled.cpp). Copied one element at a time, every
// access on the channel-last side lands in another cache line (a pixel's channels are a
// vector apart); here 16 channels by 16 pixels of a row go through registers at once and are
// transposed there, so both sides move whole vectors. Pure copies: the same bits as the
// element loop that a CPU without AVX-512 runs (to_channel_last and to_planar choose).
//
// Dims legend: C channels, H rows, W pixels a row; a planar image has channel c's row h at
// pl + c*pl_plane + h*pl_row; a channel-last one has pixel (h, w) at cl + h*cl_row + w*cl_pix,
// its C channels contiguous (cl_pix >= C). Only the C channels of the H x W pixels are read or
// written: padding around either layout is left as it is.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.h"
#include "isa_dispatch.h"
#include "vecmath.h"

#ifdef FL_AVX512_DISPATCH
#include <immintrin.h>
#endif

namespace fl::transpose {

#ifdef FL_AVX512_DISPATCH

// r[j][i] = the old r[i][j], i, j < 16: unpacks within 128-bit lanes make 4x4 blocks, then two
// rounds of 128-bit lane shuffles move the blocks.
FL_TARGET_AVX512 inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // r[4g + c], 128-bit lane k: column 4k + c of rows 4g .. 4g + 3
    for (int g = 0; g < 4; ++g) {
        r[4 * g] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
    for (int c = 0; c < 4; ++c) {
        const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
        const __m512 v2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        const __m512 v3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
        t[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        t[8 + c] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
        t[4 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// The first n of 16 lanes (all for n >= 16).
inline __mmask16 first_lanes(i64 n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1u); }

// One block: dst[j*dst_stride + i] = src[i*src_stride + j] for i < ni, j < nj (both <= 16).
// Check: returns the lanes of the values read whose exponent bits are all ones (infinities,
// NaNs); else 0.
template <bool Check>
FL_TARGET_AVX512 inline __mmask16 transpose_block(float* dst, i64 dst_stride, const float* src, i64 src_stride,
                                                  i64 ni, i64 nj) {
    __m512 r[16];
    __mmask16 bad = 0;
    for (i64 i = 0; i < 16; ++i) {
        r[i] = i < ni ? _mm512_maskz_loadu_ps(first_lanes(nj), src + i * src_stride) : _mm512_setzero_ps();
        if (Check) bad |= vm::nonfinite_lanes(r[i]);
    }
    transpose16(r);
    for (i64 j = 0; j < nj; ++j) _mm512_mask_storeu_ps(dst + j * dst_stride, first_lanes(ni), r[j]);
    return bad;
}

// block(h, c0, w0, cn, wn) for every block of cn <= 16 channels from c0 by wn <= 16 pixels
// from w0 of row h.
template <class Block>
inline void for_each_block(i64 C, i64 H, i64 W, Block block) {
    for (i64 h = 0; h < H; ++h)
        for (i64 c0 = 0; c0 < C; c0 += 16)
            for (i64 w0 = 0; w0 < W; w0 += 16) block(h, c0, w0, std::min<i64>(16, C - c0), std::min<i64>(16, W - w0));
}

// pl (C, n) int32, planes pl_plane apart = cl (n, cl_pix) int32 transposed: n pixels of C
// channels, channel-last, to planar (the pooled kernels' argmax). transpose_block's 16 by 16
// blocks, the bits moved as floats (loads, shuffles and stores only: any bit pattern passes).
FL_TARGET_AVX512 inline void to_planar_int32(std::int32_t* pl, i64 pl_plane, const std::int32_t* cl, i64 cl_pix,
                                             i64 C, i64 n) {
    auto* dst = reinterpret_cast<float*>(pl);
    const auto* src = reinterpret_cast<const float*>(cl);
    for (i64 q0 = 0; q0 < n; q0 += 16)
        for (i64 c0 = 0; c0 < C; c0 += 16)
            transpose_block<false>(dst + c0 * pl_plane + q0, pl_plane, src + q0 * cl_pix + c0, cl_pix,
                                   std::min<i64>(16, n - q0), std::min<i64>(16, C - c0));
}

#endif  // FL_AVX512_DISPATCH

// One copy between the layouts, both directions: ToChannelLast, dst is channel-last and src
// planar; else the other way round. The strides are the channel-last image's (cl_row,
// cl_pix) and the planar one's (pl_plane, pl_row) either way. Check: returns whether every
// value copied is finite (no infinity, no NaN), for a compare per vector; else true.
template <bool ToChannelLast, bool Check = false>
inline bool copy(float* dst, const float* src, i64 cl_row, i64 cl_pix, i64 pl_plane, i64 pl_row, i64 C, i64 H,
                 i64 W) {
#ifdef FL_AVX512_DISPATCH
    if (cpu_has_avx512()) {
        __mmask16 bad = 0;
        for_each_block(C, H, W, [&](i64 h, i64 c0, i64 w0, i64 cn, i64 wn) {
            const i64 cl = h * cl_row + w0 * cl_pix + c0, pl = c0 * pl_plane + h * pl_row + w0;
            if (ToChannelLast)
                bad |= transpose_block<Check>(dst + cl, cl_pix, src + pl, pl_plane, cn, wn);
            else
                bad |= transpose_block<Check>(dst + pl, pl_plane, src + cl, cl_pix, wn, cn);
        });
        return bad == 0;
    }
#endif
    bool finite = true;
    for (i64 c = 0; c < C; ++c)
        for (i64 h = 0; h < H; ++h)
            for (i64 w = 0; w < W; ++w) {
                const i64 cl = h * cl_row + w * cl_pix + c, pl = c * pl_plane + h * pl_row + w;
                const float v = src[ToChannelLast ? pl : cl];
                dst[ToChannelLast ? cl : pl] = v;
                if (Check) finite = finite && std::isfinite(v);
            }
    return finite;
}

// cl (channel-last) = pl (planar), C x H x W.
inline void to_channel_last(float* cl, i64 cl_row, i64 cl_pix, const float* pl, i64 pl_plane, i64 pl_row, i64 C,
                            i64 H, i64 W) {
    copy<true>(cl, pl, cl_row, cl_pix, pl_plane, pl_row, C, H, W);
}

// The same, returning whether every value is finite.
inline bool to_channel_last_checked(float* cl, i64 cl_row, i64 cl_pix, const float* pl, i64 pl_plane, i64 pl_row,
                                    i64 C, i64 H, i64 W) {
    return copy<true, true>(cl, pl, cl_row, cl_pix, pl_plane, pl_row, C, H, W);
}

// pl (planar) = cl (channel-last), C x H x W.
inline void to_planar(float* pl, i64 pl_plane, i64 pl_row, const float* cl, i64 cl_row, i64 cl_pix, i64 C, i64 H,
                      i64 W) {
    copy<false>(pl, cl, cl_row, cl_pix, pl_plane, pl_row, C, H, W);
}

}  // namespace fl::transpose
