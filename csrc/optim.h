// Weight penalties and optimizer updates (docs/kernels.md, "Penalties and optimizer updates").
//
// Dims legend: n is the number of elements of a parameter of any shape S, flattened (the
// optimizer passes one flat buffer holding many parameters); R, C are the rows and columns
// of a 2-D weight for max-norm.
//
// Every *_update kernel rewrites param and its state arrays in place and only reads grad;
// they must not overlap each other (the bindings check). The arithmetic is in T with the
// hyper-parameters rounded to T once, in the order of the NumPy oracle
// (fastlayers/reference/optim.py), so both backends round the same way. Each element is
// updated independently, so the result does not depend on the thread count.
#pragma once
#include <algorithm>
#include <vector>

#include "common.h"

namespace fl {

// ---- sgd.cpp
// param (n) -= lr * g
template <class T>
void sgd_update(T* param, const T* grad, i64 n, double lr, double weight_decay, double l1);

// ---- momentum.cpp
// v (n) = momentum*v - lr*g; param (n) += v
template <class T>
void momentum_update(T* param, const T* grad, T* v, i64 n, double lr, double momentum, double weight_decay,
                     double l1);

// ---- nesterov.cpp
// v_prev = v; v = momentum*v - lr*g; param += -momentum*v_prev + (1+momentum)*v
template <class T>
void nesterov_update(T* param, const T* grad, T* v, i64 n, double lr, double momentum, double weight_decay,
                     double l1);

// ---- adagrad.cpp
// h (n) += g²; param -= lr*g / (sqrt(h) + eps)
template <class T>
void adagrad_update(T* param, const T* grad, T* h, i64 n, double lr, double eps, double weight_decay, double l1);

// ---- rmsprop.cpp
// h (n) = decay*h + (1-decay)*g²; param -= lr*g / (sqrt(h) + eps)
template <class T>
void rmsprop_update(T* param, const T* grad, T* h, i64 n, double lr, double decay, double eps,
                    double weight_decay, double l1);

// ---- adam.cpp
// m, v (n): first and second moments; step >= 1 counts the updates made so far, this one included.
template <class T>
void adam_update(T* param, const T* grad, T* m, T* v, i64 n, double lr, double beta1, double beta2, double eps,
                 i64 step, double weight_decay, double l1);

// ---- max_norm.cpp
// w (R, C): axis 0 rescales each column, axis 1 each row, whose L2 norm exceeds max_norm.
template <class T>
void max_norm_update(T* w, i64 R, i64 C, double max_norm, int axis);

// ---- penalties.cpp
// Sums over x (n), accumulated in double; bit-identical for any thread count.
template <class T>
double sum_squares(const T* x, i64 n);
template <class T>
double sum_abs(const T* x, i64 n);
// Sum of (a - b)² over a, b (n), the difference and square formed in double.
template <class T>
double sum_squares_diff(const T* a, const T* b, i64 n);

// ---- scale_update.cpp
// x (n) *= alpha, the product formed in double and rounded to T once (clipping by norm).
template <class T>
void scale_update(T* x, i64 n, double alpha);

// ---- clamp_update.cpp
// x (n) clamped to [-limit, limit] (limit rounded to T); returns how many entries were outside.
template <class T>
i64 clamp_update(T* x, i64 n, double limit);

// ---- zero_update.cpp
// x (n) = +0 (zero_grad over a flat gradient buffer).
template <class T>
void zero_update(T* x, i64 n);

// ---- shared by the update kernels

namespace optim_detail {

// Element-wise loops are memory-bound; below this many elements per thread, waking a
// second thread costs more than it saves.
constexpr i64 kMinPerThread = i64{1} << 15;

// numpy.sign: +1, -1, +0 for either zero, NaN for NaN. Written as a difference of
// comparisons and one select, a form GCC vectorises (nested selects it does not).
template <class T>
inline T sign(T p) {
    const T s = static_cast<T>(p > T(0)) - static_cast<T>(p < T(0));
    return p == p ? s : p;
}

// g = grad + weight_decay*param + l1*sign(param), each term added only when its coefficient
// is non-zero (as the oracle does: 0*inf would turn an infinite weight's gradient into NaN).
// The flags are template parameters so the element loop carries no branch.
template <class T, bool WD, bool L1>
struct Penalty {
    T weight_decay, l1;
    inline T operator()(T grad, T param) const {
        T g = grad;
        if constexpr (WD) g += weight_decay * param;
        if constexpr (L1) g += l1 * sign(param);
        return g;
    }
};

// Calls body(penalty) with the Penalty specialised for which coefficients are non-zero.
template <class T, class Body>
inline void with_penalty(double weight_decay, double l1, Body&& body) {
    const T wd = static_cast<T>(weight_decay), a = static_cast<T>(l1);
    if (weight_decay != 0) {
        if (l1 != 0) body(Penalty<T, true, true>{wd, a});
        else body(Penalty<T, true, false>{wd, a});
    } else {
        if (l1 != 0) body(Penalty<T, false, true>{wd, a});
        else body(Penalty<T, false, false>{wd, a});
    }
}

// Reductions in double over fixed blocks of kSumBlock elements: each block is summed on 8
// fixed lanes (element i on lane i % 8) combined pairwise, and the block sums are added in
// block order. Nothing depends on the thread count or on the SIMD width, so the result is
// bit-identical for any OMP_NUM_THREADS and any build. term(i) is element i's double term.
constexpr i64 kSumBlock = 4096;

template <class Term>
inline double block_sum(i64 i0, i64 n, const Term& term) {
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const i64 n8 = n - n % 8;
    for (i64 i = 0; i < n8; i += 8)
        for (int j = 0; j < 8; ++j) lane[j] += term(i0 + i + j);
    for (i64 i = n8; i < n; ++i) lane[i - n8] += term(i0 + i);
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

template <class Term>
double blocked_sum(i64 n, const Term& term) {
    if (n <= kSumBlock) return block_sum(0, n, term);
    const i64 blocks = (n + kSumBlock - 1) / kSumBlock;
    std::vector<double> partial(static_cast<size_t>(blocks));  // (blocks,)
    parallel_chunks(blocks, [&](i64 b0, i64 b1) {
        for (i64 b = b0; b < b1; ++b) {
            const i64 i0 = b * kSumBlock;
            partial[b] = block_sum(i0, std::min(kSumBlock, n - i0), term);
        }
    }, kMinPerThread / kSumBlock);
    double total = 0.0;
    for (i64 b = 0; b < blocks; ++b) total += partial[b];
    return total;
}

}  // namespace optim_detail

}  // namespace fl

// `#pragma omp simd` only where OpenMP is on, so a build without it has no unknown-pragma warnings.
#ifdef _OPENMP
#define FL_OMP_SIMD _Pragma("omp simd")
#else
#define FL_OMP_SIMD
#endif
