// Affine (fully connected) layer, the textbook's x @ W + b with W stored (D, M).
#include "blas.h"
#include "kernels.h"
#include "vecmath.h"

#include <vector>

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

// out (N,M) = max(x @ W + b, 0). The ReLU runs on each block of rows right after the GEMM
// has written it, while it is still in cache, instead of as a separate layer's pass.
template <class T>
void affine_relu_forward(T* out, const T* x, const T* W, const T* b, i64 N, i64 D, i64 M) {
    affine_forward(out, x, W, b, N, D, M);
    parallel_chunks(N * M, [&](i64 i0, i64 i1) {
        for (i64 i = i0; i < i1; ++i) out[i] = out[i] > T(0) || out[i] != out[i] ? out[i] : T(0);
    }, 1 << 15);
}

// With z = x W + b and out = max(z, 0):
//   dz (N,M) = dout where out > 0 else 0   (out > 0 exactly where z > 0)
//   then dx, dW, db from dz as in affine_backward.
// dz needs a scratch of N*M; the caller's dout must not be overwritten.
template <class T>
void affine_relu_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, const T* out, i64 N, i64 D,
                          i64 M) {
    std::vector<T> dz(static_cast<size_t>(checked_mul(N, M)));
    T* g = dz.data();
    parallel_chunks(N * M, [&](i64 i0, i64 i1) { vm::relu_mask(g + i0, out + i0, dout + i0, i1 - i0); }, 1 << 15);
    affine_backward(dx, dW, db, g, x, W, N, D, M);
}

template void affine_forward<float>(float*, const float*, const float*, const float*, i64, i64, i64);
template void affine_forward<double>(double*, const double*, const double*, const double*, i64, i64, i64);
template void affine_backward<float>(float*, float*, float*, const float*, const float*, const float*, i64, i64, i64);
template void affine_backward<double>(double*, double*, double*, const double*, const double*, const double*, i64, i64, i64);

}  // namespace fl

namespace fl {
template void affine_relu_forward<float>(float*, const float*, const float*, const float*, i64, i64, i64);
template void affine_relu_forward<double>(double*, const double*, const double*, const double*, i64, i64, i64);
template void affine_relu_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*,
                                          i64, i64, i64);
template void affine_relu_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                           const double*, i64, i64, i64);
}  // namespace fl
