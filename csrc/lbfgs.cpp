// The L-BFGS two-loop recursion (Nocedal & Wright, Algorithm 7.4) over a flat vector.
#include <vector>

#include "lbfgs.h"
#include "optim.h"

namespace fl {

// With the pairs ordered oldest (j = 0) to newest (j = K-1), row i(j) = (first + j) % K:
//   q = g
//   for j = K-1 .. 0:  a_j = rho_i * (s_i . q)          (double)
//                      q -= T(a_j) * y_i                 (in T)
//   q *= T(gamma)
//   for j = 0 .. K-1:  b = rho_i * (y_i . q)             (double)
//                      q += T(a_j - b) * s_i             (in T)
//   d = -q
// Each element-wise line is the oracle's operation in its order (no fused multiply-adds in
// this file); the dot products are fl::dot's fixed-block sums, which is where the two
// backends round differently.
template <class T>
void lbfgs_direction(T* d, const T* g, const T* s, const T* y, const T* rho, i64 K, i64 n, double gamma,
                     i64 first) {
    // d, g (n); s, y (K, n); rho (K)
    const i64 grain = optim_detail::kMinPerThread;
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        for (i64 i = i0; i < i1; ++i) d[i] = g[i];
    }, grain);
    std::vector<double> a(static_cast<size_t>(K));  // (K,)
    for (i64 j = K - 1; j >= 0; --j) {
        const i64 row = (first + j) % K;
        const T* si = s + row * n;
        const T* yi = y + row * n;
        a[j] = static_cast<double>(rho[row]) * dot(si, d, n);
        const T aj = static_cast<T>(a[j]);
        parallel_chunks(n, [&](i64 i0, i64 i1) {
            FL_OMP_SIMD
            for (i64 i = i0; i < i1; ++i) d[i] -= aj * yi[i];
        }, grain);
    }
    const T gm = static_cast<T>(gamma);
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        FL_OMP_SIMD
        for (i64 i = i0; i < i1; ++i) d[i] *= gm;
    }, grain);
    for (i64 j = 0; j < K; ++j) {
        const i64 row = (first + j) % K;
        const T* si = s + row * n;
        const T* yi = y + row * n;
        const double b = static_cast<double>(rho[row]) * dot(yi, d, n);
        const T c = static_cast<T>(a[j] - b);
        parallel_chunks(n, [&](i64 i0, i64 i1) {
            FL_OMP_SIMD
            for (i64 i = i0; i < i1; ++i) d[i] += c * si[i];
        }, grain);
    }
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        for (i64 i = i0; i < i1; ++i) d[i] = -d[i];
    }, grain);
}

template void lbfgs_direction<float>(float*, const float*, const float*, const float*, const float*, i64, i64,
                                     double, i64);
template void lbfgs_direction<double>(double*, const double*, const double*, const double*, const double*, i64, i64,
                                      double, i64);

}  // namespace fl
