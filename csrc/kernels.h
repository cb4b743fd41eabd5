// Native kernels. Dims legend (see docs/kernels.md):
//   N batch, D input features, M output features, K classes,
//   C channels, H/W height/width, FN/FH/FW filters, OH/OW output height/width.
// Every pointer is row-major contiguous. Activation gradients (dx) are overwritten;
// parameter gradients (dW, db) are accumulated (+=): callers zero them once per step.
#pragma once
#include "common.h"

namespace fl {

// ---- affine.cpp
template <class T>
void affine_forward(T* out, const T* x, const T* W, const T* b, i64 N, i64 D, i64 M);
template <class T>
void affine_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, i64 N, i64 D, i64 M);
template <class T>
void affine_relu_forward(T* out, const T* x, const T* W, const T* b, i64 N, i64 D, i64 M);
template <class T>
void affine_relu_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, const T* out, i64 N, i64 D,
                          i64 M);

// ---- relu.cpp
template <class T>
void relu_forward(T* out, const T* x, i64 n);
template <class T>
void relu_backward(T* dx, const T* dout, const T* x, i64 n);

// ---- softmax_cross_entropy.cpp
template <class T>
double softmax_cross_entropy_forward(T* probs, const T* logits, const std::int64_t* labels,
                                     const T* targets, i64 N, i64 K);
template <class T>
void softmax_cross_entropy_backward(T* dlogits, const T* probs, const std::int64_t* labels,
                                    const T* targets, double dloss, i64 N, i64 K);

// ---- affine_warp.cpp
// out, x (N,C,H,W); theta (N,2,3) maps output pixel centres (x = column, y = row) to the
// input points they sample, bilinearly, `fill` outside. No backward: the inputs are data.
template <class T>
void affine_warp_forward(T* out, const T* x, const T* theta, double fill, i64 N, i64 C, i64 H, i64 W);

}  // namespace fl
