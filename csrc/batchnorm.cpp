// Batch normalisation per feature of (N,D) or per channel of (N,C,H,W), with the ReLU-fused
// variants. x is read as (N,F,S): S == 1 is the (N,D) layout, S == H*W the NCHW one.
//
// Statistics are two-pass (the mean, then the mean of squared deviations from it) and
// accumulated in double: E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std.
// Every reduction has a fixed order that depends only on the shape, so results are
// bitwise identical for any thread count:
//   (N,D):    a block of kFeatureBlock features per task; each feature's sums run over
//             n = 0..N-1 in order, the inner loop vectorised across features.
//   (N,C,S):  one channel per task; the sums are vectors of 8 double lanes (lane k takes
//             the elements i = k mod 8 of each plane), planes in order n = 0..N-1, lanes
//             folded by a fixed tree at the end. The lanes are written as GCC vector
//             types, so the order is the same whatever the vector width.
// The per-task work is compiled twice (baseline and AVX-512, chosen at run time): the
// double-precision sums are compute-bound at SSE2 width. The AVX-512 build may contract a
// multiply and an add into one FMA, so its last bits can differ from a baseline CPU's; for
// a given CPU the result still does not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "isa_dispatch.h"
#include "norm.h"

namespace fl {

namespace {

constexpr i64 kFeatureBlock = 64;
// Elements per thread below which a kernel stays on one thread.
constexpr i64 kMinWork = i64{1} << 15;

inline i64 min_tasks(i64 work_per_task) {
    return std::max<i64>(1, kMinWork / std::max<i64>(work_per_task, 1));
}

template <class T>
inline T relu(T v) {
    return v > T(0) || v != v ? v : T(0);
}

// Eight lanes of T, and of double for the sums. (A vector_size attribute on an alias
// template would be dropped, hence the specialisations.)
template <class T>
struct LanesOf;
template <>
struct LanesOf<float> {
    typedef float type __attribute__((vector_size(32)));
};
template <>
struct LanesOf<double> {
    typedef double type __attribute__((vector_size(64)));
};
template <class T>
using Lanes = typename LanesOf<T>::type;
using Sum8 = LanesOf<double>::type;

// Vector values pass through references: a vector argument or return value by value would
// have an instruction-set-dependent calling convention.
template <class T>
FL_ALWAYS_INLINE void load8(Lanes<T>& v, const T* p) {
    std::memcpy(&v, p, sizeof v);
}

// The eight elements at p, widened to double.
template <class T>
FL_ALWAYS_INLINE void widen8(Sum8& w, const T* p) {
    Lanes<T> v;
    load8(v, p);
    w = __builtin_convertvector(v, Sum8);
}

FL_ALWAYS_INLINE double fold(const Sum8& a) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// d where o > 0, else +0 (the ReLU's gradient gate), as a bit mask rather than a select:
// a select of a float that is then widened to double does not vectorise when floating
// point may trap (GCC's default), the mask does.
template <class T>
FL_ALWAYS_INLINE T gate(T d, T o) {
    using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    Bits b;
    std::memcpy(&b, &d, sizeof b);
    b &= -static_cast<Bits>(o > T(0));
    std::memcpy(&d, &b, sizeof b);
    return d;
}

// g = dL/dy at element j: dout, or for the fused kernels dout where the forward output is
// > 0.
template <class T, bool Relu>
FL_ALWAYS_INLINE T grad_at(const T* dout, const T* out, i64 j) {
    if constexpr (Relu) {
        return gate(dout[j], out[j]);
    } else {
        (void)out;
        return dout[j];
    }
}

template <class T>
struct TrainArgs {
    T *out, *mean, *invstd, *running_mean, *running_var;
    const T *x, *gamma, *beta;
    double momentum, eps;
    i64 N, F, S;
};

template <class T>
struct BackwardArgs {
    T *dx, *dgamma, *dbeta;  // dx may be null
    const T *dout, *x, *gamma, *mean, *invstd, *out;  // out: Relu only
    i64 N, F, S;
};

// Writes the batch statistics of feature f and moves its running statistics.
template <class T>
FL_ALWAYS_INLINE void store_stats(const TrainArgs<T>& a, i64 f, double mu, double var) {
    const i64 m = a.N * a.S;
    a.mean[f] = static_cast<T>(mu);
    a.invstd[f] = static_cast<T>(1.0 / std::sqrt(var + a.eps));
    // m == 1 has no unbiased estimate; the contract keeps the biased 0.
    const double unbiased = m > 1 ? var * (static_cast<double>(m) / static_cast<double>(m - 1)) : var;
    a.running_mean[f] = static_cast<T>(a.momentum * static_cast<double>(a.running_mean[f]) + (1.0 - a.momentum) * mu);
    a.running_var[f] =
        static_cast<T>(a.momentum * static_cast<double>(a.running_var[f]) + (1.0 - a.momentum) * unbiased);
}

template <class T, bool Relu>
struct Train {
    using Args = TrainArgs<T>;

    // Features [f0, f0 + nf) of x (N,F), nf = NF, or width when NF is 0 (see features()).
    template <i64 NF>
    static FL_ALWAYS_INLINE void block(const Args& a, i64 f0, i64 width) {
        const i64 N = a.N, F = a.F, nf = NF > 0 ? NF : width;
        const double inv_m = 1.0 / static_cast<double>(N);
        double mu[kFeatureBlock] = {}, var[kFeatureBlock] = {};
        for (i64 n = 0; n < N; ++n) {
            const T* row = a.x + n * F + f0;  // (nf,)
            for (i64 f = 0; f < nf; ++f) mu[f] += static_cast<double>(row[f]);
        }
        for (i64 f = 0; f < nf; ++f) mu[f] *= inv_m;
        for (i64 n = 0; n < N; ++n) {
            const T* row = a.x + n * F + f0;
            for (i64 f = 0; f < nf; ++f) {
                const double d = static_cast<double>(row[f]) - mu[f];
                var[f] += d * d;
            }
        }
        T shift[kFeatureBlock], scale[kFeatureBlock], bias[kFeatureBlock];
        for (i64 f = 0; f < nf; ++f) {
            store_stats(a, f0 + f, mu[f], var[f] * inv_m);
            shift[f] = a.mean[f0 + f];
            scale[f] = a.invstd[f0 + f] * a.gamma[f0 + f];
            bias[f] = a.beta[f0 + f];
        }
        for (i64 n = 0; n < N; ++n) {
            const T* row = a.x + n * F + f0;  // (nf,)
            T* o = a.out + n * F + f0;        // (nf,)
            for (i64 f = 0; f < nf; ++f) {
                const T y = (row[f] - shift[f]) * scale[f] + bias[f];
                o[f] = Relu ? relu(y) : y;
            }
        }
    }

    // Channel c of x (N,F,S).
    static FL_ALWAYS_INLINE void channel(const Args& a, i64 c) {
        const i64 N = a.N, F = a.F, S = a.S, S8 = S - S % 8;
        const double inv_m = 1.0 / static_cast<double>(N * S);
        Sum8 sum = {};
        for (i64 n = 0; n < N; ++n) {
            const T* p = a.x + (n * F + c) * S;  // (S,)
            for (i64 i = 0; i < S8; i += 8) {
                Sum8 v;
                widen8(v, p + i);
                sum += v;
            }
            for (i64 i = S8; i < S; ++i) sum[i - S8] += static_cast<double>(p[i]);
        }
        const double mu = fold(sum) * inv_m;
        Sum8 sq = {};
        for (i64 n = 0; n < N; ++n) {
            const T* p = a.x + (n * F + c) * S;
            for (i64 i = 0; i < S8; i += 8) {
                Sum8 d;
                widen8(d, p + i);
                d -= mu;
                sq += d * d;
            }
            for (i64 i = S8; i < S; ++i) {
                const double d = static_cast<double>(p[i]) - mu;
                sq[i - S8] += d * d;
            }
        }
        store_stats(a, c, mu, fold(sq) * inv_m);
        const T shift = a.mean[c], scale = a.invstd[c] * a.gamma[c], bias = a.beta[c];
        for (i64 n = 0; n < N; ++n) {
            const T* p = a.x + (n * F + c) * S;  // (S,)
            T* o = a.out + (n * F + c) * S;      // (S,)
            for (i64 i = 0; i < S; ++i) {
                const T y = (p[i] - shift) * scale + bias;
                o[i] = Relu ? relu(y) : y;
            }
        }
    }
};

// With xhat = (x - mean)*invstd, y = gamma*xhat + beta and g = dL/dy, per feature over its
// m = N*S elements:
//   (1) dbeta  += sum g
//   (2) dgamma += sum g*xhat = invstd * sum g*(x - mean)
//   (3) dx = gamma*invstd/m * (m*g - sum g - xhat * sum g*xhat)
//          = A*(g - c1) - B*(x - mean),  A = gamma*invstd, c1 = (sum g)/m,
//                                        B = A*invstd*(sum g*xhat)/m
template <class T, bool Relu>
struct Backward {
    using Args = BackwardArgs<T>;

    // Accumulates (1) and (2) for feature f from its sums; returns A, c1, B of (3).
    static FL_ALWAYS_INLINE void finish(const Args& a, i64 f, double sg, double sgx, T& A, T& c1, T& B) {
        const i64 m = a.N * a.S;
        const double inv_m = m > 0 ? 1.0 / static_cast<double>(m) : 0.0;
        const double istd = static_cast<double>(a.invstd[f]);
        const double sum_gxhat = sgx * istd;
        a.dbeta[f] = static_cast<T>(static_cast<double>(a.dbeta[f]) + sg);
        a.dgamma[f] = static_cast<T>(static_cast<double>(a.dgamma[f]) + sum_gxhat);
        const double gi = static_cast<double>(a.gamma[f]) * istd;
        A = static_cast<T>(gi);
        c1 = static_cast<T>(sg * inv_m);
        B = static_cast<T>(gi * istd * sum_gxhat * inv_m);
    }

    template <i64 NF>
    static FL_ALWAYS_INLINE void block(const Args& a, i64 f0, i64 width) {
        const i64 N = a.N, F = a.F, nf = NF > 0 ? NF : width;
        double sg[kFeatureBlock] = {}, sgx[kFeatureBlock] = {}, mu[kFeatureBlock];
        for (i64 f = 0; f < nf; ++f) mu[f] = static_cast<double>(a.mean[f0 + f]);
        for (i64 n = 0; n < N; ++n) {
            const i64 j0 = n * F + f0;
            for (i64 f = 0; f < nf; ++f) {
                const double g = static_cast<double>(grad_at<T, Relu>(a.dout, a.out, j0 + f));
                sg[f] += g;
                sgx[f] += g * (static_cast<double>(a.x[j0 + f]) - mu[f]);
            }
        }
        T A[kFeatureBlock], c1[kFeatureBlock], B[kFeatureBlock], shift[kFeatureBlock];
        for (i64 f = 0; f < nf; ++f) {
            finish(a, f0 + f, sg[f], sgx[f], A[f], c1[f], B[f]);
            shift[f] = a.mean[f0 + f];
        }
        if (!a.dx) return;
        for (i64 n = 0; n < N; ++n) {
            const i64 j0 = n * F + f0;
            for (i64 f = 0; f < nf; ++f)
                a.dx[j0 + f] =
                    A[f] * (grad_at<T, Relu>(a.dout, a.out, j0 + f) - c1[f]) - B[f] * (a.x[j0 + f] - shift[f]);
        }
    }

    static FL_ALWAYS_INLINE void channel(const Args& a, i64 c) {
        const i64 N = a.N, F = a.F, S = a.S, S8 = S - S % 8;
        const double mu = static_cast<double>(a.mean[c]);
        Sum8 sg8 = {}, sgx8 = {};
        for (i64 n = 0; n < N; ++n) {
            const i64 j0 = (n * F + c) * S;
            for (i64 i = 0; i < S8; i += 8) {
                Lanes<T> gv;
                load8(gv, a.dout + j0 + i);
                if constexpr (Relu) {
                    Lanes<T> ov;
                    load8(ov, a.out + j0 + i);
                    gv = ov > T(0) ? gv : Lanes<T>{};
                }
                const Sum8 g = __builtin_convertvector(gv, Sum8);
                Sum8 xv;
                widen8(xv, a.x + j0 + i);
                sg8 += g;
                sgx8 += g * (xv - mu);
            }
            for (i64 i = S8; i < S; ++i) {
                const double g = static_cast<double>(grad_at<T, Relu>(a.dout, a.out, j0 + i));
                sg8[i - S8] += g;
                sgx8[i - S8] += g * (static_cast<double>(a.x[j0 + i]) - mu);
            }
        }
        T A, c1, B;
        finish(a, c, fold(sg8), fold(sgx8), A, c1, B);
        if (!a.dx) return;
        const T shift = a.mean[c];
        for (i64 n = 0; n < N; ++n) {
            const i64 j0 = (n * F + c) * S;
            for (i64 i = 0; i < S; ++i)
                a.dx[j0 + i] = A * (grad_at<T, Relu>(a.dout, a.out, j0 + i) - c1) - B * (a.x[j0 + i] - shift);
        }
    }
};

// Feature block blk of x (N,F) through kernel K: a whole block at its width known when
// compiling, so that its sums stay in registers; the last, narrower one at run time.
template <class K>
FL_ALWAYS_INLINE void features(const typename K::Args& a, i64 blk) {
    const i64 f0 = blk * kFeatureBlock, nf = std::min(kFeatureBlock, a.F - f0);
    if (nf == kFeatureBlock)
        K::template block<kFeatureBlock>(a, f0, nf);
    else
        K::template block<0>(a, f0, nf);
}

// One task (a feature block, or a channel) of kernel K, in the baseline and AVX-512 builds.
template <class K>
void task_default(const typename K::Args& a, i64 t) {
    if (a.S == 1) features<K>(a, t);
    else K::channel(a, t);
}

#ifdef FL_AVX512_DISPATCH
template <class K>
FL_TARGET_AVX512 void task_avx512(const typename K::Args& a, i64 t) {
    if (a.S == 1) features<K>(a, t);
    else K::channel(a, t);
}
#endif

// Runs every task of kernel K: feature blocks for (N,D), channels for (N,C,H,W).
template <class K>
void run_tasks(const typename K::Args& a) {
    auto task = &task_default<K>;
#ifdef FL_AVX512_DISPATCH
    if (cpu_has_avx512()) task = &task_avx512<K>;
#endif
    const bool by_feature = a.S == 1;
    const i64 tasks = by_feature ? (a.F + kFeatureBlock - 1) / kFeatureBlock : a.F;
    parallel_for(tasks, [&](i64 t) { task(a, t); }, min_tasks(a.N * (by_feature ? kFeatureBlock : a.S)));
}

// Element-wise once the per-feature scale is known, so any partition gives the same bits.
template <class T, bool Relu>
void forward_eval(T* out, const T* x, const T* gamma, const T* beta, const T* running_mean, const T* running_var,
                  double eps, i64 N, i64 F, i64 S) {
    std::vector<T> scale(static_cast<size_t>(F));  // (F,) gamma / sqrt(running_var + eps)
    for (i64 f = 0; f < F; ++f)
        scale[f] = T(1) / std::sqrt(running_var[f] + static_cast<T>(eps)) * gamma[f];
    const T* a = scale.data();
    if (S == 1) {
        parallel_chunks(N, [&](i64 n0, i64 n1) {
            for (i64 n = n0; n < n1; ++n) {
                const T* row = x + n * F;  // (F,)
                T* o = out + n * F;        // (F,)
                for (i64 f = 0; f < F; ++f) {
                    const T y = (row[f] - running_mean[f]) * a[f] + beta[f];
                    o[f] = Relu ? relu(y) : y;
                }
            }
        }, min_tasks(F));
        return;
    }
    parallel_for(N * F, [&](i64 p) {
        const i64 c = p % F;
        const T* xp = x + p * S;  // (S,)
        T* o = out + p * S;       // (S,)
        const T shift = running_mean[c], sc = a[c], bias = beta[c];
        for (i64 i = 0; i < S; ++i) {
            const T y = (xp[i] - shift) * sc + bias;
            o[i] = Relu ? relu(y) : y;
        }
    }, min_tasks(S));
}

}  // namespace

template <class T>
void batchnorm_forward_train(T* out, T* mean, T* invstd, T* running_mean, T* running_var, const T* x,
                             const T* gamma, const T* beta, double momentum, double eps, i64 N, i64 F, i64 S) {
    run_tasks<Train<T, false>>({out, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps, N, F, S});
}

template <class T>
void batchnorm_relu_forward_train(T* out, T* mean, T* invstd, T* running_mean, T* running_var, const T* x,
                                  const T* gamma, const T* beta, double momentum, double eps, i64 N, i64 F, i64 S) {
    run_tasks<Train<T, true>>({out, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps, N, F, S});
}

template <class T>
void batchnorm_forward_eval(T* out, const T* x, const T* gamma, const T* beta, const T* running_mean,
                            const T* running_var, double eps, i64 N, i64 F, i64 S) {
    forward_eval<T, false>(out, x, gamma, beta, running_mean, running_var, eps, N, F, S);
}

template <class T>
void batchnorm_relu_forward_eval(T* out, const T* x, const T* gamma, const T* beta, const T* running_mean,
                                 const T* running_var, double eps, i64 N, i64 F, i64 S) {
    forward_eval<T, true>(out, x, gamma, beta, running_mean, running_var, eps, N, F, S);
}

template <class T>
void batchnorm_backward(T* dx, T* dgamma, T* dbeta, const T* dout, const T* x, const T* gamma, const T* mean,
                        const T* invstd, i64 N, i64 F, i64 S) {
    run_tasks<Backward<T, false>>({dx, dgamma, dbeta, dout, x, gamma, mean, invstd, nullptr, N, F, S});
}

template <class T>
void batchnorm_relu_backward(T* dx, T* dgamma, T* dbeta, const T* dout, const T* x, const T* gamma,
                             const T* mean, const T* invstd, const T* out, i64 N, i64 F, i64 S) {
    run_tasks<Backward<T, true>>({dx, dgamma, dbeta, dout, x, gamma, mean, invstd, out, N, F, S});
}

#define FL_INSTANTIATE(T)                                                                                        \
    template void batchnorm_forward_train<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*, double, double,  \
                                             i64, i64, i64);                                                     \
    template void batchnorm_relu_forward_train<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*, double,     \
                                                  double, i64, i64, i64);                                        \
    template void batchnorm_forward_eval<T>(T*, const T*, const T*, const T*, const T*, const T*, double, i64,  \
                                            i64, i64);                                                           \
    template void batchnorm_relu_forward_eval<T>(T*, const T*, const T*, const T*, const T*, const T*, double,  \
                                                 i64, i64, i64);                                                 \
    template void batchnorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, i64, i64, \
                                        i64);                                                                    \
    template void batchnorm_relu_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*,      \
                                             const T*, i64, i64, i64);
FL_INSTANTIATE(float)
FL_INSTANTIATE(double)
#undef FL_INSTANTIATE

}  // namespace fl
