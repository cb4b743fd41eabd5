// Affine (fully connected) layer, the textbook's x @ W + b with W stored (D, M).
#include "blas.h"
#include "kernels.h"

namespace fl {

// out (N,M) = x (N,D) @ W (D,M) + b (M,)
// The bias is broadcast into out first and the GEMM accumulates onto it (beta = 1): one
// pass over out instead of a GEMM pass plus a separate bias pass.
template <class T>
void affine_forward(T* out, const T* x, const T* W, const T* b, i64 N, i64 D, i64 M) {
    parallel_for(N, [&](i64 n) {
        T* row = out + n * M;
        for (i64 m = 0; m < M; ++m) row[m] = b[m];
    }, 64);
    blas::gemm(false, false, N, M, D, T(1), x, D, W, M, T(1), out, M);
}

// With y = x W + b and upstream gradient dout = dL/dy (N,M):
//   dx (N,D) = dout @ W^T              (overwritten; skipped when dx is null)
//   dW (D,M) += x^T @ dout             (accumulated: beta = 1)
//   db (M,)  += sum over n of dout[n]  (accumulated)
template <class T>
void affine_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, i64 N, i64 D, i64 M) {
    if (dx) blas::gemm(false, true, N, D, M, T(1), dout, M, W, M, T(0), dx, D);
    blas::gemm(true, false, D, M, N, T(1), x, D, dout, M, T(1), dW, M);
    // Column sums: each thread owns a disjoint block of columns and walks rows in order, so
    // the result does not depend on the thread count.
    parallel_chunks(M, [&](i64 m0, i64 m1) {
        for (i64 n = 0; n < N; ++n) {
            const T* row = dout + n * M;
            for (i64 m = m0; m < m1; ++m) db[m] += row[m];
        }
    }, 64);
}

template void affine_forward<float>(float*, const float*, const float*, const float*, i64, i64, i64);
template void affine_forward<double>(double*, const double*, const double*, const double*, i64, i64, i64);
template void affine_backward<float>(float*, float*, float*, const float*, const float*, const float*, i64, i64, i64);
template void affine_backward<double>(double*, double*, double*, const double*, const double*, const double*, i64, i64, i64);

}  // namespace fl
