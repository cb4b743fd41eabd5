// Loss kernels other than softmax cross-entropy (kernels.h). Dims: N batch, n total elements
// of y and t (N times the product of the other axes).
#pragma once
#include "common.h"

namespace fl {

// ---- mse.cpp: 0.5 * sum((y - t)^2) / N, accumulated in double
template <class T>
double mse_forward(const T* y, const T* t, i64 N, i64 n);
template <class T>
void mse_backward(T* dy, const T* y, const T* t, double dloss, i64 N, i64 n);

}  // namespace fl
