// The flat-vector kernels of the L-BFGS optimizer (docs/kernels.md, "L-BFGS").
//
// Dims legend: n is the number of elements of the flat parameter vector (the optimizer's one
// buffer); K the number of (s, y) pairs of curvature history passed to lbfgs_direction.
//
// Reductions (dot, and the dot products inside lbfgs_direction) are accumulated in double
// over fixed blocks combined in a fixed order, so every result is bit-identical for any
// thread count; element-wise steps round in T, in the oracle's order.
#pragma once
#include "common.h"

namespace fl {

// ---- dot.cpp
// sum of x*y over x, y (n), accumulated in double.
template <class T>
double dot(const T* x, const T* y, i64 n);

// ---- max_abs.cpp
// max |x| over x (n); NaN when any entry is NaN; 0 for n = 0.
template <class T>
double max_abs(const T* x, i64 n);

// ---- add_scaled.cpp
// out (n) = x + alpha*y, alpha rounded to T once.
template <class T>
void add_scaled_forward(T* out, const T* x, const T* y, i64 n, double alpha);

// ---- lbfgs.cpp
// d (n) = -H g, H the L-BFGS inverse Hessian of the K pairs s, y (K, n) with rho (K)
// = 1/(y.s) and initial matrix gamma*I. The pairs are taken oldest to newest starting at row
// `first` and wrapping around (a ring buffer); 0 <= first < max(K, 1).
template <class T>
void lbfgs_direction(T* d, const T* g, const T* s, const T* y, const T* rho, i64 K, i64 n, double gamma,
                     i64 first);

}  // namespace fl
