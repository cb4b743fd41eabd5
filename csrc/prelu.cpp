// PReLU: leaky ReLU with a learned slope, shared (one alpha) or one per channel of axis 1.
// The kernels see x as (N, C, S): S is the product of the axes after the channel axis, and a
// shared slope is the case N = 1, C = 1, S = every element.
#include <vector>

#include "activations.h"
#include "vecmath.h"

namespace fl {

namespace {

// dalpha is reduced over blocks of at most this many elements of one (n, c) row. Each block is
// summed in double by kLanes interleaved partial sums (lane_sum); the block sums are then
// combined in (n, block) order. Neither depends on how the blocks were spread over threads,
// so the result is the same for any thread count.
constexpr i64 kBlock = 4096;
constexpr int kLanes = 8;

// The oracle's term of dalpha, x > 0 ? 0 : dout * x, as a product of two selects so that it
// vectorises: with x > 0 both factors are zero, so an infinite or NaN dout there contributes 0
// as in the oracle. zero is vm::opaque(0) (see there).
template <class T>
inline T slope_term(T g, T xv, T zero) {
    const bool pos = xv > T(0);
    return (pos ? zero : g) * (pos ? zero : xv);
}

// Sum of v[0..n) in double by kLanes interleaved partial sums: pure additions, which the
// compiler keeps in vector registers.
template <class T>
double lane_sum(const T* v, i64 n) {
    double lane[kLanes] = {};
    i64 i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int j = 0; j < kLanes; ++j) lane[j] += static_cast<double>(v[i + j]);
    for (int j = 0; i < n; ++i, ++j) lane[j] += static_cast<double>(v[i]);
    double sum = 0.0;
    for (int j = 0; j < kLanes; ++j) sum += lane[j];
    return sum;
}

}  // namespace

// out[n,c,s] = x if x > 0 else alpha[c] * x, as x times the selected slope (1 or alpha[c]):
// x * 1 is x exactly, and a select between two slopes vectorises where a select between x
// and a product does not (the 1 is vm::opaque, see there).
template <class T>
void prelu_forward(T* out, const T* x, const T* alpha, i64 N, i64 C, i64 S) {
    // Nothing to do, and the grain sizes below divide by S.
    if (N == 0 || C == 0 || S == 0) return;
    if (S == 1) {
        // (N, C): the slope varies along the contiguous axis.
        parallel_chunks(N, [&](i64 n0, i64 n1) {
            const T one = vm::opaque(T(1));
            for (i64 n = n0; n < n1; ++n) {
                const T* xr = x + n * C;  // (C,)
                T* outr = out + n * C;    // (C,)
                FL_SIMD
                for (i64 c = 0; c < C; ++c) {
                    const T v = xr[c], a = alpha[c];
                    outr[c] = v * (v > T(0) ? one : a);
                }
            }
        }, kGrainSelect / (C > 0 ? C : 1) + 1);
        return;
    }
    // One slope per contiguous row of S.
    parallel_chunks(N * C, [&](i64 r0, i64 r1) {
        const T one = vm::opaque(T(1));
        for (i64 r = r0; r < r1; ++r) {
            const T a = alpha[r % C];
            const T* xr = x + r * S;  // (S,)
            T* outr = out + r * S;    // (S,)
            FL_SIMD
            for (i64 s = 0; s < S; ++s) outr[s] = xr[s] * (xr[s] > T(0) ? one : a);
        }
    }, kGrainSelect / S + 1);
}

// With out = x (x > 0) or alpha[c] x (x <= 0):
//   (1) dx[n,c,s]  = dout where x > 0, else alpha[c] * dout     (overwritten)
//   (2) dalpha[c] += sum over n, s of (x > 0 ? 0 : dout * x)     (accumulated)
template <class T>
void prelu_backward(T* dx, T* dalpha, const T* dout, const T* x, const T* alpha, i64 N, i64 C, i64 S) {
    // No terms: dalpha gains nothing (and the grain sizes below divide by S).
    if (N == 0 || C == 0 || S == 0) return;
    if (S == 1) {
        // (N, C): (1) row by row; (2) as column sums in double, each thread owning a range of
        // columns and walking the rows in order, so each column is summed in one fixed order.
        parallel_chunks(N, [&](i64 n0, i64 n1) {
            const T one = vm::opaque(T(1));
            for (i64 n = n0; n < n1; ++n) {
                const T* xr = x + n * C;     // (C,)
                const T* gr = dout + n * C;  // (C,)
                T* dxr = dx + n * C;         // (C,)
                FL_SIMD
                for (i64 c = 0; c < C; ++c) {
                    const T a = alpha[c];
                    dxr[c] = gr[c] * (xr[c] > T(0) ? one : a);
                }
            }
        }, kGrainSelect / (C > 0 ? C : 1) + 1);
        std::vector<double> acc(static_cast<size_t>(C), 0.0);  // (C,)
        parallel_chunks(C, [&](i64 c0, i64 c1) {
            const T zero = vm::opaque(T(0));
            for (i64 n = 0; n < N; ++n) {
                const T* xr = x + n * C;
                const T* gr = dout + n * C;
                FL_SIMD
                for (i64 c = c0; c < c1; ++c) acc[c] += static_cast<double>(slope_term(gr[c], xr[c], zero));
            }
        }, 256);
        for (i64 c = 0; c < C; ++c) dalpha[c] += static_cast<T>(acc[c]);
        return;
    }
    // Rows of S split into blocks; each (row, block) item writes its slice of dx and one
    // partial sum of (2).
    const i64 blocks_per_row = (S + kBlock - 1) / kBlock;
    const i64 items = N * C * blocks_per_row;
    std::vector<double> partial(static_cast<size_t>(items));  // (N, C, blocks_per_row)
    parallel_chunks(items, [&](i64 i0, i64 i1) {
        const T one = vm::opaque(T(1)), zero = vm::opaque(T(0));
        // The terms of (2) for one block go through a buffer: a loop that writes them (or dx)
        // and sums them at once gets its selects turned into branches, which mispredict on
        // every other element of real data. Three simple loops over a block in cache vectorise.
        T term[kBlock];
        for (i64 item = i0; item < i1; ++item) {
            const i64 r = item / blocks_per_row, blk = item % blocks_per_row;
            const T a = alpha[r % C];
            const i64 s0 = blk * kBlock, s1 = s0 + kBlock < S ? s0 + kBlock : S;
            const T* xr = x + r * S + s0;     // (s1 - s0,)
            const T* gr = dout + r * S + s0;  // (s1 - s0,)
            T* dxr = dx + r * S + s0;         // (s1 - s0,)
            FL_SIMD
            for (i64 s = 0; s < s1 - s0; ++s) dxr[s] = gr[s] * (xr[s] > T(0) ? one : a);
            FL_SIMD
            for (i64 s = 0; s < s1 - s0; ++s) term[s] = slope_term(gr[s], xr[s], zero);
            partial[item] = lane_sum(term, s1 - s0);
        }
    }, kGrainSelect / (S < kBlock ? S : kBlock) + 1);
    for (i64 c = 0; c < C; ++c) {
        double sum = 0.0;
        for (i64 n = 0; n < N; ++n)
            for (i64 blk = 0; blk < blocks_per_row; ++blk) sum += partial[(n * C + c) * blocks_per_row + blk];
        dalpha[c] += static_cast<T>(sum);
    }
}

template void prelu_forward<float>(float*, const float*, const float*, i64, i64, i64);
template void prelu_forward<double>(double*, const double*, const double*, i64, i64, i64);
template void prelu_backward<float>(float*, float*, const float*, const float*, const float*, i64, i64, i64);
template void prelu_backward<double>(double*, double*, const double*, const double*, const double*, i64, i64, i64);

}  // namespace fl
