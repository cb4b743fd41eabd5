// Maxout: each of M units is the maximum of K affine pieces, x (N,D), W (K,D,M), b (K,M).
//
// Each piece is one GEMM x @ W[k] with W[k] (D,M) used in place; the K results land side by
// side in a workspace z (N, K, M) (leading dimension K*M), so that the maximum over pieces
// reads K contiguous runs of M per row. One GEMM against W rearranged as (D, K*M) would need a
// transposed copy of W on every call, for little: measured at (100,784)->(100,100), K=2, one
// thread, the two (100,784)x(784,100) GEMMs take 330 us and one (100,784)x(784,200) 318 us,
// before the copy.
#include <algorithm>
#include <vector>

#include "activations.h"
#include "blas.h"
#include "vecmath.h"

namespace fl {

// z[n,k,:] = x[n] @ W[k] + b[k];  out[n,m] = max_k z[n,k,m];  argmax[n,m] = the first k that
// attains it, or the first k whose z is NaN (np.argmax's rule: NaN counts as the maximum).
template <class T>
void maxout_forward(T* out, std::int32_t* argmax, const T* x, const T* W, const T* b, i64 N, i64 D, i64 K, i64 M) {
    if (N == 0 || M == 0) return;
    const i64 KM = checked_workspace_size(K, M, "maxout_forward");
    // With one piece the maximum is the piece: no workspace.
    std::vector<T> zbuf(K == 1 ? 0 : static_cast<size_t>(checked_workspace_size(N, KM, "maxout_forward")));
    T* z = K == 1 ? out : zbuf.data();  // (N, K, M)
    // Bias first, then the GEMMs accumulate onto it (beta = 1): one pass over z fewer.
    parallel_for(N, [&](i64 n) { std::copy(b, b + KM, z + n * KM); }, 64);
    if (D > 0)
        for (i64 k = 0; k < K; ++k)
            blas::gemm(false, false, N, M, D, T(1), x, D, W + k * D * M, M, T(1), z + k * M, KM);
    if (K == 1) {
        std::fill(argmax, argmax + N * M, std::int32_t{0});
        return;
    }
    parallel_chunks(N, [&](i64 n0, i64 n1) {
        for (i64 n = n0; n < n1; ++n) {
            const T* zn = z + n * KM;  // (K, M)
            T* o = out + n * M;        // (M,)
            std::int32_t* a = argmax + n * M;
            FL_SIMD
            for (i64 m = 0; m < M; ++m) {
                o[m] = zn[m];
                a[m] = 0;
            }
            for (i64 k = 1; k < K; ++k) {
                const T* zk = zn + k * M;
                FL_SIMD
                for (i64 m = 0; m < M; ++m) {
                    const T v = zk[m], cur = o[m];
                    // Strictly greater keeps the first of equal maxima; a NaN replaces only a
                    // non-NaN, so the first NaN stays.
                    const bool take = (v > cur) | ((v != v) & (cur == cur));
                    o[m] = take ? v : cur;
                    a[m] = take ? static_cast<std::int32_t>(k) : a[m];
                }
            }
        }
    }, kGrainSelect / KM + 1);
}

// With g_k (N,M) = dout where argmax == k, else 0 (each output routes its gradient to the
// piece that won):
//   (1) dx    = sum_k g_k @ W[k]^T        (N,D), overwritten; skipped when dx is null
//   (2) dW[k] += x^T @ g_k                (D,M)
//   (3) db[k] += sum over n of g_k[n]     (M,)
// All g_k live in one masked copy of dout, g (N, K, M), read with leading dimension K*M.
template <class T>
void maxout_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, const std::int32_t* argmax, i64 N,
                     i64 D, i64 K, i64 M) {
    if (M == 0 || N == 0) {
        if (dx) std::fill(dx, dx + N * D, T(0));
        return;
    }
    const i64 KM = checked_workspace_size(K, M, "maxout_backward");
    std::vector<T> gbuf(static_cast<size_t>(checked_workspace_size(N, KM, "maxout_backward")));
    T* g = gbuf.data();  // (N, K, M)
    parallel_chunks(N, [&](i64 n0, i64 n1) {
        for (i64 n = n0; n < n1; ++n) {
            const T* d = dout + n * M;
            const std::int32_t* a = argmax + n * M;
            for (i64 k = 0; k < K; ++k) {
                T* gk = g + n * KM + k * M;
                FL_SIMD
                for (i64 m = 0; m < M; ++m) gk[m] = a[m] == k ? d[m] : T(0);
            }
        }
    }, kGrainSelect / KM + 1);
    if (D > 0) {
        for (i64 k = 0; k < K; ++k) {
            const T* gk = g + k * M;
            const T* Wk = W + k * D * M;
            blas::gemm(true, false, D, M, N, T(1), x, D, gk, KM, T(1), dW + k * D * M, M);  // (2)
            if (dx) blas::gemm(false, true, N, D, M, T(1), gk, KM, Wk, M, k == 0 ? T(0) : T(1), dx, D);  // (1)
        }
    }
    // (3): column sums of g viewed as (N, K*M), in double; each thread owns a range of columns
    // and walks the rows in order, so the sums do not depend on the thread count.
    parallel_chunks(KM, [&](i64 c0, i64 c1) {
        std::vector<double> acc(static_cast<size_t>(c1 - c0), 0.0);
        for (i64 n = 0; n < N; ++n) {
            const T* row = g + n * KM;
            FL_SIMD
            for (i64 c = c0; c < c1; ++c) acc[c - c0] += static_cast<double>(row[c]);
        }
        for (i64 c = c0; c < c1; ++c) db[c] += static_cast<T>(acc[c - c0]);
    }, 256);
}

template void maxout_forward<float>(float*, std::int32_t*, const float*, const float*, const float*, i64, i64, i64,
                                    i64);
template void maxout_forward<double>(double*, std::int32_t*, const double*, const double*, const double*, i64, i64, i64,
                                     i64);
template void maxout_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                     const std::int32_t*, i64, i64, i64, i64);
template void maxout_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                      const std::int32_t*, i64, i64, i64, i64);

}  // namespace fl
