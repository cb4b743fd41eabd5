// Activation kernels. Dims legend (see docs/kernels.md):
//   n  elements of an element-wise kernel (any shape, flattened)
//   N  batch, C channels (axis 1), S the product of the axes after the channel axis
//   D  input features, M output features/units, K pieces of a maxout unit (or softmax width)
// Every pointer is row-major contiguous and no output aliases an input (the bindings check).
// dx is overwritten; parameter gradients (dalpha, dW, db, dcenters, dwidths) are accumulated.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.h"

namespace fl {

// a * b for non-negative sizes that size a workspace; std::overflow_error rather than a
// wrapped product.
inline i64 checked_workspace_size(i64 a, i64 b, const char* what) {
    if (a != 0 && b > INT64_MAX / a)
        throw std::overflow_error(std::string(what) + ": workspace size " + std::to_string(a) + " x " +
                                  std::to_string(b) + " overflows a 64-bit size");
    return a * b;
}

// Minimum elements per thread of an element-wise loop. A copy or a select streams memory at
// ~0.1 ns per element, so splitting pays only beyond ~32k elements (a thread wake-up costs
// microseconds); a loop that evaluates exp or log costs ~1-2 ns per element and splits earlier.
constexpr i64 kGrainSelect = i64{1} << 15;
constexpr i64 kGrainMath = i64{1} << 13;

// ---- leaky_relu.cpp: out = x if x > 0 else alpha*x
template <class T>
void leaky_relu_forward(T* out, const T* x, T alpha, i64 n);
template <class T>
void leaky_relu_backward(T* dx, const T* dout, const T* x, T alpha, i64 n);

// ---- prelu.cpp: x viewed as (N, C, S) with slope alpha[c]; a shared slope is C = 1.
template <class T>
void prelu_forward(T* out, const T* x, const T* alpha, i64 N, i64 C, i64 S);
template <class T>
void prelu_backward(T* dx, T* dalpha, const T* dout, const T* x, const T* alpha, i64 N, i64 C, i64 S);

// ---- sigmoid.cpp (backward reads the forward output y)
template <class T>
void sigmoid_forward(T* out, const T* x, i64 n);
template <class T>
void sigmoid_backward(T* dx, const T* dout, const T* y, i64 n);

// ---- tanh.cpp (backward reads the forward output y)
template <class T>
void tanh_forward(T* out, const T* x, i64 n);
template <class T>
void tanh_backward(T* dx, const T* dout, const T* y, i64 n);

// ---- count_outside.cpp: x viewed as (N, C, S); counts (C) += the entries of each unit c
// below lo or above hi (NaN never counts).
template <class T>
void count_outside(i64* counts, const T* x, i64 N, i64 C, i64 S, T lo, T hi);

// ---- hardtanh.cpp: clip to [lo, hi]
template <class T>
void hardtanh_forward(T* out, const T* x, T lo, T hi, i64 n);
template <class T>
void hardtanh_backward(T* dx, const T* dout, const T* x, T lo, T hi, i64 n);

// ---- softplus.cpp
template <class T>
void softplus_forward(T* out, const T* x, i64 n);
template <class T>
void softplus_backward(T* dx, const T* dout, const T* x, i64 n);

// ---- identity.cpp
template <class T>
void identity_forward(T* out, const T* x, i64 n);
template <class T>
void identity_backward(T* dx, const T* dout, i64 n);

// ---- softmax.cpp: over the last axis of (N, K)
template <class T>
void softmax_forward(T* out, const T* x, i64 N, i64 K);
template <class T>
void softmax_backward(T* dx, const T* dout, const T* y, i64 N, i64 K);

// ---- maxout.cpp: x (N,D), W (K,D,M), b (K,M) -> out (N,M), argmax (N,M)
template <class T>
void maxout_forward(T* out, std::int32_t* argmax, const T* x, const T* W, const T* b, i64 N, i64 D, i64 K, i64 M);
template <class T>
void maxout_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, const std::int32_t* argmax, i64 N,
                     i64 D, i64 K, i64 M);

// ---- rbf.cpp: x (N,D), centers (M,D), widths (M,) -> out (N,M)
template <class T>
void rbf_forward(T* out, const T* x, const T* centers, const T* widths, i64 N, i64 D, i64 M);
template <class T>
void rbf_backward(T* dx, T* dcenters, T* dwidths, const T* dout, const T* x, const T* centers, const T* widths,
                  const T* out, i64 N, i64 D, i64 M);

}  // namespace fl
