// Normalisation and regularisation kernels. Dims legend (see docs/kernels.md):
//   N batch, F features: D of an (N,D) input or C of an (N,C,H,W) input,
//   S elements of one feature per sample: 1 for (N,D), H*W for (N,C,H,W).
// x is read as (N,F,S); per-feature vectors are (F,). Activation gradients (dx) are
// overwritten; parameter gradients (dgamma, dbeta) are accumulated (+=).
#pragma once
#include <cstdint>

#include "common.h"

namespace fl {

// ---- batchnorm.cpp
// With m = N*S: mean = sum x / m, var = sum (x - mean)^2 / m (biased, two passes),
// invstd = 1/sqrt(var + eps), out = (x - mean)*invstd*gamma + beta; running_* updated in
// place with the unbiased var*m/(m-1) (m == 1 keeps 0). Requires m >= 1.
template <class T>
void batchnorm_forward_train(T* out, T* mean, T* invstd, T* running_mean, T* running_var, const T* x,
                             const T* gamma, const T* beta, double momentum, double eps, i64 N, i64 F, i64 S);
// out = max(batchnorm_forward_train(...), 0), NaN propagating like relu_forward.
template <class T>
void batchnorm_relu_forward_train(T* out, T* mean, T* invstd, T* running_mean, T* running_var, const T* x,
                                  const T* gamma, const T* beta, double momentum, double eps, i64 N, i64 F, i64 S);
// out = (x - running_mean)/sqrt(running_var + eps)*gamma + beta.
template <class T>
void batchnorm_forward_eval(T* out, const T* x, const T* gamma, const T* beta, const T* running_mean,
                            const T* running_var, double eps, i64 N, i64 F, i64 S);
template <class T>
void batchnorm_relu_forward_eval(T* out, const T* x, const T* gamma, const T* beta, const T* running_mean,
                                 const T* running_var, double eps, i64 N, i64 F, i64 S);
// dx (may be null) overwritten; dgamma, dbeta +=.
template <class T>
void batchnorm_backward(T* dx, T* dgamma, T* dbeta, const T* dout, const T* x, const T* gamma, const T* mean,
                        const T* invstd, i64 N, i64 F, i64 S);
// As batchnorm_backward with dout replaced by dout where out > 0 else 0 (out: the fused
// forward's output).
template <class T>
void batchnorm_relu_backward(T* dx, T* dgamma, T* dbeta, const T* dout, const T* x, const T* gamma,
                             const T* mean, const T* invstd, const T* out, i64 N, i64 F, i64 S);

// ---- dropout.cpp
// The counter-based uniform of the contract: u(seed, i) = splitmix64(seed*2^32 + i) >> 40,
// times 2^-24. keep = u >= p; mask = keep; out = x * keep * scale. Requires 0 <= p < 1.
template <class T>
void dropout_forward(T* out, std::uint8_t* mask, const T* x, i64 n, double p, std::uint32_t seed, double scale);
// dx = dout * mask * scale (mask read as a number, as the oracle does).
template <class T>
void dropout_backward(T* dx, const T* dout, const std::uint8_t* mask, i64 n, double scale);
// out = alpha * x.
template <class T>
void scale_forward(T* out, const T* x, i64 n, double alpha);

}  // namespace fl
