// Gaussian radial basis units: x (N,D), centers (M,D), widths (M,) -> out (N,M) with
// out[n,m] = exp(-||x_n - c_m||^2 / (2 w_m^2)).
//
// The squared distances come from one GEMM: ||x - c||^2 = ||x||^2 + ||c||^2 - 2 x.c. Computing
// the differences directly costs N*M*D subtractions outside any GEMM (~10x slower at
// (100,784)->(100,100)), but the expansion cancels: its rounding error is relative to
// ||x||^2 + ||c||^2, not to the distance, and can push a tiny distance below zero (clamped to
// 0). For float the whole expansion runs in double (float inputs converted once), which puts
// that error far below a float ulp of the result; for double it is the price of the GEMM.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "activations.h"
#include "blas.h"
#include "vecmath.h"

namespace fl {

namespace {

// Row squared norms of a (R, D) in double, each row summed in index order.
template <class T>
void row_sq_norms(double* out, const T* a, i64 R, i64 D) {
    parallel_chunks(R, [&](i64 r0, i64 r1) {
        for (i64 r = r0; r < r1; ++r) {
            const T* row = a + r * D;
            double s = 0.0;
            for (i64 d = 0; d < D; ++d) s += static_cast<double>(row[d]) * static_cast<double>(row[d]);
            out[r] = s;
        }
    }, kGrainSelect / (D > 0 ? D : 1) + 1);
}

// d2 (N,M) = max(||x_n||^2 + ||c_m||^2 - 2 x_n.c_m, 0) in double.
template <class T>
void sq_dist(double* d2, const T* x, const T* c, i64 N, i64 D, i64 M) {
    std::vector<double> xx(static_cast<size_t>(N)), cc(static_cast<size_t>(M));
    row_sq_norms(xx.data(), x, N, D);
    row_sq_norms(cc.data(), c, M, D);
    if (D == 0 || N == 0 || M == 0) {
        std::fill(d2, d2 + N * M, 0.0);
        return;
    }
    if constexpr (std::is_same_v<T, double>) {
        blas::gemm(false, true, N, M, D, -2.0, x, D, c, D, 0.0, d2, M);
    } else {
        // x and c are arrays of these sizes already; only their double copies are new.
        std::vector<double> xd(static_cast<size_t>(N * D)), cd(static_cast<size_t>(M * D));
        parallel_chunks(N * D, [&](i64 i0, i64 i1) { std::copy(x + i0, x + i1, xd.begin() + i0); }, kGrainSelect);
        parallel_chunks(M * D, [&](i64 i0, i64 i1) { std::copy(c + i0, c + i1, cd.begin() + i0); }, kGrainSelect);
        blas::gemm(false, true, N, M, D, -2.0, xd.data(), D, cd.data(), D, 0.0, d2, M);
    }
    parallel_chunks(N, [&](i64 n0, i64 n1) {
        for (i64 n = n0; n < n1; ++n) {
            double* row = d2 + n * M;
            const double xn = xx[n];
            FL_SIMD
            for (i64 m = 0; m < M; ++m) {
                const double v = (xn + cc[m]) + row[m];
                row[m] = v < 0.0 ? 0.0 : v;
            }
        }
    }, kGrainSelect / M + 1);
    // A row or centre whose squared norm is not finite (an infinite or NaN entry, or a float64
    // beyond 1e154) takes the differences directly: the expansion would give inf - inf = NaN
    // for an infinite distance, whose RBF value is 0, or lose a finite distance between two
    // huge vectors.
    auto direct = [&](i64 n, i64 m) {
        double s = 0.0;
        for (i64 d = 0; d < D; ++d) {
            const double t = static_cast<double>(x[n * D + d]) - static_cast<double>(c[m * D + d]);
            s += t * t;
        }
        d2[n * M + m] = s;
    };
    for (i64 n = 0; n < N; ++n)
        if (!std::isfinite(xx[n]))
            for (i64 m = 0; m < M; ++m) direct(n, m);
    for (i64 m = 0; m < M; ++m)
        if (!std::isfinite(cc[m]))
            for (i64 n = 0; n < N; ++n)
                if (std::isfinite(xx[n])) direct(n, m);
}

}  // namespace

// out[n,m] = exp(-d2[n,m] / (2 w_m^2)), the exponent formed and exponentiated in double.
template <class T>
void rbf_forward(T* out, const T* x, const T* centers, const T* widths, i64 N, i64 D, i64 M) {
    if (N == 0 || M == 0) return;
    std::vector<double> d2(static_cast<size_t>(checked_workspace_size(N, M, "rbf_forward")));  // (N, M)
    sq_dist(d2.data(), x, centers, N, D, M);
    std::vector<double> two_w2(static_cast<size_t>(M));  // (M,)
    for (i64 m = 0; m < M; ++m) two_w2[m] = 2.0 * static_cast<double>(widths[m]) * static_cast<double>(widths[m]);
    parallel_chunks(N, [&](i64 n0, i64 n1) {
        const auto bounds = vm::bounds<double>();
        for (i64 n = n0; n < n1; ++n) {
            const double* row = d2.data() + n * M;
            T* o = out + n * M;
            FL_SIMD
            for (i64 m = 0; m < M; ++m) o[m] = static_cast<T>(vm::exp(-row[m] / two_w2[m], bounds));
        }
    }, kGrainMath / M + 1);
}

// With y = out and g[n,m] = dout * y / w_m^2 (the factor shared by every gradient; from
// dy/dc_m = y (x_n - c_m) / w_m^2 and dy/dw_m = y ||x_n - c_m||^2 / w_m^3):
//   (1) dx[n]        = sum_m g (c_m - x_n) = (g @ centers)[n] - x_n * sum_m g[n,m]   (overwritten)
//   (2) dcenters[m] += sum_n g (x_n - c_m) = (g^T @ x)[m] - c_m * sum_n g[n,m]
//   (3) dwidths[m]  += sum_n g ||x_n - c_m||^2 / w_m
// The row and column sums of g and the sum of (3) are accumulated in double in a fixed order.
template <class T>
void rbf_backward(T* dx, T* dcenters, T* dwidths, const T* dout, const T* x, const T* centers, const T* widths,
                  const T* out, i64 N, i64 D, i64 M) {
    if (N == 0) return;
    if (M == 0) {
        if (dx) std::fill(dx, dx + N * D, T(0));
        return;
    }
    const i64 NM = checked_workspace_size(N, M, "rbf_backward");
    std::vector<T> g(static_cast<size_t>(NM));  // (N, M)
    std::vector<T> inv_w2(static_cast<size_t>(M));
    for (i64 m = 0; m < M; ++m) inv_w2[m] = T(1) / (widths[m] * widths[m]);
    std::vector<double> row_sum(static_cast<size_t>(N));  // (N,)
    parallel_chunks(N, [&](i64 n0, i64 n1) {
        for (i64 n = n0; n < n1; ++n) {
            const T* d = dout + n * M;
            const T* y = out + n * M;
            T* gr = g.data() + n * M;
            FL_SIMD
            for (i64 m = 0; m < M; ++m) gr[m] = d[m] * y[m] * inv_w2[m];
            double s = 0.0;
            for (i64 m = 0; m < M; ++m) s += static_cast<double>(gr[m]);
            row_sum[n] = s;
        }
    }, kGrainSelect / M + 1);

    std::vector<double> d2(static_cast<size_t>(NM));  // (N, M)
    sq_dist(d2.data(), x, centers, N, D, M);
    // Column sums of g and of g * d2, per column range, rows in order.
    parallel_chunks(M, [&](i64 m0, i64 m1) {
        std::vector<double> gs(static_cast<size_t>(m1 - m0), 0.0), gd(static_cast<size_t>(m1 - m0), 0.0);
        for (i64 n = 0; n < N; ++n) {
            const T* gr = g.data() + n * M;
            const double* dr = d2.data() + n * M;
            FL_SIMD
            for (i64 m = m0; m < m1; ++m) {
                gs[m - m0] += static_cast<double>(gr[m]);
                gd[m - m0] += static_cast<double>(gr[m]) * dr[m];
            }
        }
        for (i64 m = m0; m < m1; ++m) {
            dwidths[m] += static_cast<T>(gd[m - m0] / static_cast<double>(widths[m]));  // (3)
            gs[m - m0] = -gs[m - m0];
        }
        if (D > 0) {
            // (2), the subtraction: dcenters[m] -= c_m * sum_n g, before the GEMM adds g^T x.
            for (i64 m = m0; m < m1; ++m) {
                const T s = static_cast<T>(gs[m - m0]);
                const T* c = centers + m * D;
                T* dc = dcenters + m * D;
                FL_SIMD
                for (i64 d = 0; d < D; ++d) dc[d] += c[d] * s;
            }
        }
    }, 64);
    if (D == 0) return;
    blas::gemm(true, false, M, D, N, T(1), g.data(), M, x, D, T(1), dcenters, D);  // (2)
    if (dx) {
        blas::gemm(false, false, N, D, M, T(1), g.data(), M, centers, D, T(0), dx, D);  // (1)
        parallel_chunks(N, [&](i64 n0, i64 n1) {
            for (i64 n = n0; n < n1; ++n) {
                const T s = static_cast<T>(row_sum[n]);
                const T* xr = x + n * D;
                T* d = dx + n * D;
                FL_SIMD
                for (i64 k = 0; k < D; ++k) d[k] -= xr[k] * s;
            }
        }, kGrainSelect / D + 1);
    }
}

template void rbf_forward<float>(float*, const float*, const float*, const float*, i64, i64, i64);
template void rbf_forward<double>(double*, const double*, const double*, const double*, i64, i64, i64);
template void rbf_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*,
                                  const float*, i64, i64, i64);
template void rbf_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                   const double*, const double*, i64, i64, i64);

}  // namespace fl
