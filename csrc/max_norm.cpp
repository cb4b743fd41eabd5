// Max-norm constraint: rescale the slices of a 2-D weight whose L2 norm exceeds a limit.
#include <algorithm>
#include <cmath>
#include <vector>

#include "optim.h"

namespace fl {

namespace {

// Norms are accumulated in double (one running sum per slice, rows added in order), as
// the oracle does; a slice over the limit is multiplied by the factor max_norm/norm,
// formed in double and rounded to T once. Slices within the limit keep their bits.
template <class T>
void max_norm_columns(T* w, i64 R, i64 C, double max_norm) {
    // w (R, C); column c is w[0..R, c]. Work is split by column blocks so every column's
    // sum is formed by one thread in row order, whatever the thread count.
    std::vector<double> sumsq(static_cast<size_t>(C), 0.0);  // (C,)
    std::vector<T> factor(static_cast<size_t>(C));            // (C,)
    const i64 min_cols = std::max<i64>(1, optim_detail::kMinPerThread / std::max<i64>(R, 1));
    parallel_chunks(C, [&](i64 c0, i64 c1) {
        double* s = sumsq.data();
        for (i64 r = 0; r < R; ++r) {
            const T* row = w + r * C;
            FL_OMP_SIMD
            for (i64 c = c0; c < c1; ++c) {
                const double x = static_cast<double>(row[c]);
                s[c] += x * x;
            }
        }
        bool any = false;
        for (i64 c = c0; c < c1; ++c) {
            const double norm = std::sqrt(s[c]);
            const bool over = norm > max_norm;
            factor[c] = over ? static_cast<T>(max_norm / norm) : T(1);
            any = any || over;
        }
        if (!any) return;
        const T* f = factor.data();
        for (i64 r = 0; r < R; ++r) {
            T* row = w + r * C;
            // Columns within the limit have the factor 1, and x*1 is x bit for bit (-0, inf
            // and quiet NaN included), so one unconditional, vectorised pass serves them all.
            FL_OMP_SIMD
            for (i64 c = c0; c < c1; ++c) row[c] *= f[c];
        }
    }, min_cols);
}

template <class T>
void max_norm_rows(T* w, i64 R, i64 C, double max_norm) {
    // w (R, C); row r is w[r, 0..C]. Each row's sum uses 8 fixed lanes combined in a fixed
    // order, so it does not depend on the thread count or on the vector width.
    const i64 min_rows = std::max<i64>(1, optim_detail::kMinPerThread / std::max<i64>(C, 1));
    parallel_for(R, [&](i64 r) {
        T* row = w + r * C;
        double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const i64 C8 = C - C % 8;
        for (i64 c = 0; c < C8; c += 8)
            for (int j = 0; j < 8; ++j) {
                const double x = static_cast<double>(row[c + j]);
                lane[j] += x * x;
            }
        for (i64 c = C8; c < C; ++c) {
            const double x = static_cast<double>(row[c]);
            lane[c - C8] += x * x;
        }
        const double sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
        const double norm = std::sqrt(sum);
        if (!(norm > max_norm)) return;
        const T f = static_cast<T>(max_norm / norm);
        FL_OMP_SIMD
        for (i64 c = 0; c < C; ++c) row[c] *= f;
    }, min_rows);
}

}  // namespace

template <class T>
void max_norm_update(T* w, i64 R, i64 C, double max_norm, int axis) {
    if (R == 0 || C == 0) return;
    if (axis == 0) max_norm_columns(w, R, C, max_norm);
    else max_norm_rows(w, R, C, max_norm);
}

template void max_norm_update<float>(float*, i64, i64, double, int);
template void max_norm_update<double>(double*, i64, i64, double, int);

}  // namespace fl
