#include <cmath>
#include <string>
#include <vector>

#include "activations.h"
#include "checks.h"
#include "kernels.h"
#include "vecmath.h"

namespace fl::bind {

namespace {

using Named = std::pair<const py::array*, const char*>;

std::string repr(double v) { return real_repr(v); }

const char* dtype_name(DType t) { return t == DType::f32 ? "float32" : "float64"; }

// A real hyper-parameter that must stay finite once rounded to the arrays' dtype
// (reference/activations.py: _finite_hyper).
template <class T>
T finite_hyper(const Checker& c, py::handle v, const char* name, DType dtype) {
    const double d = c.real(v, name);
    const T t = vm::narrow<T>(d);
    if (!std::isfinite(t))
        c.value_error(std::string("argument '") + name + "' must be finite in " + dtype_name(dtype) + "; got " +
                      repr(d));
    return t;
}

struct Unary {
    Arr x, out;
};

// x and one output of the same dtype and shape (reference: _unary).
Unary unary(const Checker& c, py::handle out_, py::handle x_) {
    Arr x = input(c, x_, "x", std::nullopt, nullptr);
    Arr out = output(c, out_, "out", x.dtype, "x");
    c.same_shape(out.a, "out", x.a, "x");
    return {x, out};
}

struct UnaryBackward {
    Arr x, dout, dx;
};

// x (or the forward output, named x_name), dout and dx of one dtype and shape
// (reference: _unary_backward).
UnaryBackward unary_backward(const Checker& c, py::handle dx_, py::handle dout_, py::handle x_,
                             const char* x_name = "x") {
    Arr x = input(c, x_, x_name, std::nullopt, nullptr);
    Arr dout = input(c, dout_, "dout", x.dtype, x_name);
    Arr dx = output(c, dx_, "dx", x.dtype, x_name);
    c.same_shape(dout.a, "dout", x.a, x_name);
    c.same_shape(dx.a, "dx", x.a, x_name);
    return {x, dout, dx};
}

// out = f(x) for a kernel without hyper-parameters.
template <class F32, class F64>
void def_unary(py::module_& m, const char* name, F32 f32, F64 f64, const char* doc) {
    m.def(
        name,
        [name, f32, f64](py::object out_, py::object x_) {
            Checker c{name};
            Unary u = unary(c, out_, x_);
            c.outputs_distinct({{&u.out.a, "out"}}, {{&u.x.a, "x"}});
            py::gil_scoped_release nogil;
            if (u.x.dtype == DType::f32) f32(u.out.ptr<float>(), u.x.ptr<float>(), u.x.size());
            else f64(u.out.ptr<double>(), u.x.ptr<double>(), u.x.size());
        },
        py::arg("out"), py::arg("x"), doc);
}

// dx = f(dout, v) with v the input x or the forward output (x_name says which).
template <class F32, class F64>
void def_unary_backward(py::module_& m, const char* name, const char* x_name, F32 f32, F64 f64, const char* doc) {
    m.def(
        name,
        [name, x_name, f32, f64](py::object dx_, py::object dout_, py::object x_) {
            Checker c{name};
            UnaryBackward u = unary_backward(c, dx_, dout_, x_, x_name);
            c.outputs_distinct({{&u.dx.a, "dx"}}, {{&u.dout.a, "dout"}, {&u.x.a, x_name}});
            py::gil_scoped_release nogil;
            if (u.x.dtype == DType::f32) f32(u.dx.ptr<float>(), u.dout.ptr<float>(), u.x.ptr<float>(), u.x.size());
            else f64(u.dx.ptr<double>(), u.dout.ptr<double>(), u.x.ptr<double>(), u.x.size());
        },
        py::arg("dx"), py::arg("dout"), py::arg(x_name), doc);
}

// alpha of PReLU: (1,) shared, or (C,) for the channels on axis 1 of x (reference: _prelu_alpha).
// Returns x seen as (N, C, S) for the kernel.
struct PreluView {
    Arr alpha;
    i64 N, C, S;
};

PreluView prelu_alpha(const Checker& c, py::handle alpha_, const Arr& x) {
    Arr alpha = input(c, alpha_, "alpha", x.dtype, "x");
    c.ndim(alpha.a, "alpha", 1);
    if (alpha.dim(0) == 1) return {alpha, 1, 1, x.size()};
    if (x.a.ndim() < 2)
        c.value_error("argument 'alpha' has shape " + shape_str(alpha.a) +
                      "; a per-channel alpha needs 'x' with at least 2 dimensions (channels on axis 1), got shape " +
                      shape_str(x.a));
    c.shape(alpha.a, "alpha", {x.dim(1)});
    i64 S = 1;
    for (py::ssize_t i = 2; i < x.a.ndim(); ++i) S *= x.dim(i);
    return {alpha, x.dim(0), x.dim(1), S};
}

// A (R, K) array with K >= 1 (reference: _rows).
void rows(const Checker& c, const Arr& a, const char* name) {
    c.ndim(a.a, name, 2);
    if (a.dim(1) < 1)
        c.value_error(std::string("argument '") + name + "' must have at least one column; got shape " +
                      shape_str(a.a));
}

struct MaxoutShapes {
    Arr W;
    i64 N, D, K, M;
};

// x (N,D) and W (K,D,M) with K >= 1 (reference: _maxout_shapes).
MaxoutShapes maxout_shapes(const Checker& c, const Arr& x, py::handle W_) {
    c.ndim(x.a, "x", 2);
    const i64 N = x.dim(0), D = x.dim(1);
    Arr W = input(c, W_, "W", x.dtype, "x");
    c.ndim(W.a, "W", 3);
    c.shape(W.a, "W", {-1, D, -1});
    const i64 K = W.dim(0), M = W.dim(2);
    if (K < 1) c.value_error("argument 'W' must hold at least one piece; got shape " + shape_str(W.a));
    return {W, N, D, K, M};
}

struct RbfShapes {
    Arr centers, widths;
    i64 N, D, M;
};

// x (N,D), centers (M,D), widths (M,) with every widths[m]^2 non-zero in the dtype
// (reference: _rbf_shapes).
RbfShapes rbf_shapes(const Checker& c, const Arr& x, py::handle centers_, py::handle widths_) {
    c.ndim(x.a, "x", 2);
    const i64 N = x.dim(0), D = x.dim(1);
    Arr centers = input(c, centers_, "centers", x.dtype, "x");
    c.ndim(centers.a, "centers", 2);
    c.shape(centers.a, "centers", {-1, D});
    const i64 M = centers.dim(0);
    Arr widths = input(c, widths_, "widths", x.dtype, "x");
    c.shape(widths.a, "widths", {M});
    dispatch(x.dtype, [&](auto t) {
        using T = decltype(t);
        const T* w = widths.ptr<T>();
        for (i64 m = 0; m < M; ++m)
            if (w[m] * w[m] == T(0))
                c.value_error("argument 'widths' holds " + repr(static_cast<double>(w[m])) + " at index " +
                              std::to_string(m) + "; expected non-zero widths whose square is non-zero");
    });
    return {centers, widths, N, D, M};
}

}  // namespace

void bind_activations(py::module_& m) {
    def_unary(m, "relu_forward", relu_forward<float>, relu_forward<double>, "out = max(x, 0), any shape");
    def_unary_backward(m, "relu_backward", "x", relu_backward<float>, relu_backward<double>,
                       "dx = dout where x > 0 else 0");
    // ---- leaky ReLU
    m.def(
        "leaky_relu_forward",
        [](py::object out_, py::object x_, py::object alpha_) {
            Checker c{"leaky_relu_forward"};
            Unary u = unary(c, out_, x_);
            dispatch(u.x.dtype, [&](auto t) {
                using T = decltype(t);
                const T alpha = finite_hyper<T>(c, alpha_, "alpha", u.x.dtype);
                c.outputs_distinct({{&u.out.a, "out"}}, {{&u.x.a, "x"}});
                py::gil_scoped_release nogil;
                leaky_relu_forward<T>(u.out.ptr<T>(), u.x.ptr<T>(), alpha, u.x.size());
            });
        },
        py::arg("out"), py::arg("x"), py::arg("alpha"), "out = x where x > 0, else alpha * x (alpha finite)");

    m.def(
        "leaky_relu_backward",
        [](py::object dx_, py::object dout_, py::object x_, py::object alpha_) {
            Checker c{"leaky_relu_backward"};
            UnaryBackward u = unary_backward(c, dx_, dout_, x_);
            dispatch(u.x.dtype, [&](auto t) {
                using T = decltype(t);
                const T alpha = finite_hyper<T>(c, alpha_, "alpha", u.x.dtype);
                c.outputs_distinct({{&u.dx.a, "dx"}}, {{&u.dout.a, "dout"}, {&u.x.a, "x"}});
                py::gil_scoped_release nogil;
                leaky_relu_backward<T>(u.dx.ptr<T>(), u.dout.ptr<T>(), u.x.ptr<T>(), alpha, u.x.size());
            });
        },
        py::arg("dx"), py::arg("dout"), py::arg("x"), py::arg("alpha"), "dx = dout where x > 0, else alpha * dout");

    // ---- PReLU
    m.def(
        "prelu_forward",
        [](py::object out_, py::object x_, py::object alpha_) {
            Checker c{"prelu_forward"};
            Unary u = unary(c, out_, x_);
            PreluView v = prelu_alpha(c, alpha_, u.x);
            c.outputs_distinct({{&u.out.a, "out"}}, {{&u.x.a, "x"}, {&v.alpha.a, "alpha"}});
            dispatch(u.x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                prelu_forward<T>(u.out.ptr<T>(), u.x.ptr<T>(), v.alpha.ptr<T>(), v.N, v.C, v.S);
            });
        },
        py::arg("out"), py::arg("x"), py::arg("alpha"),
        "out = x where x > 0, else alpha * x; alpha (1,) shared or (C,) per channel of axis 1");

    m.def(
        "prelu_backward",
        [](py::object dx_, py::object dalpha_, py::object dout_, py::object x_, py::object alpha_) {
            Checker c{"prelu_backward"};
            UnaryBackward u = unary_backward(c, dx_, dout_, x_);
            PreluView v = prelu_alpha(c, alpha_, u.x);
            Arr dalpha = output(c, dalpha_, "dalpha", u.x.dtype, "x");
            c.same_shape(dalpha.a, "dalpha", v.alpha.a, "alpha");
            c.outputs_distinct({{&u.dx.a, "dx"}, {&dalpha.a, "dalpha"}},
                               {{&u.dout.a, "dout"}, {&u.x.a, "x"}, {&v.alpha.a, "alpha"}});
            dispatch(u.x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                prelu_backward<T>(u.dx.ptr<T>(), dalpha.ptr<T>(), u.dout.ptr<T>(), u.x.ptr<T>(), v.alpha.ptr<T>(),
                                  v.N, v.C, v.S);
            });
        },
        py::arg("dx"), py::arg("dalpha"), py::arg("dout"), py::arg("x"), py::arg("alpha"),
        "dx = dout where x > 0, else alpha * dout (overwritten); dalpha += sum of dout * x where x <= 0");

    // ---- sigmoid, tanh, softplus, identity
    def_unary(m, "sigmoid_forward", sigmoid_forward<float>, sigmoid_forward<double>,
              "out = 1 / (1 + exp(-x)), finite for any finite x");
    def_unary_backward(m, "sigmoid_backward", "out", sigmoid_backward<float>, sigmoid_backward<double>,
                       "dx = dout * y * (1 - y), y the forward output");
    def_unary(m, "tanh_forward", tanh_forward<float>, tanh_forward<double>, "out = tanh(x)");
    def_unary_backward(m, "tanh_backward", "out", tanh_backward<float>, tanh_backward<double>,
                       "dx = dout * (1 - y^2), y the forward output");
    def_unary(m, "softplus_forward", softplus_forward<float>, softplus_forward<double>,
              "out = log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|))");
    def_unary_backward(m, "softplus_backward", "x", softplus_backward<float>, softplus_backward<double>,
                       "dx = dout * sigmoid(x)");
    def_unary(m, "identity_forward", identity_forward<float>, identity_forward<double>, "out = x");

    m.def(
        "identity_backward",
        [](py::object dx_, py::object dout_) {
            Checker c{"identity_backward"};
            Arr dout = input(c, dout_, "dout", std::nullopt, nullptr);
            Arr dx = output(c, dx_, "dx", dout.dtype, "dout");
            c.same_shape(dx.a, "dx", dout.a, "dout");
            c.outputs_distinct({{&dx.a, "dx"}}, {{&dout.a, "dout"}});
            dispatch(dout.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                identity_backward<T>(dx.ptr<T>(), dout.ptr<T>(), dout.size());
            });
        },
        py::arg("dx"), py::arg("dout"), "dx = dout");

    // ---- HardTanh
    m.def(
        "hardtanh_forward",
        [](py::object out_, py::object x_, py::object min_val_, py::object max_val_) {
            Checker c{"hardtanh_forward"};
            Unary u = unary(c, out_, x_);
            const double lo = c.real(min_val_, "min_val"), hi = c.real(max_val_, "max_val");
            if (!(lo < hi))
                c.value_error("argument 'min_val' must be less than 'max_val'; got min_val=" + repr(lo) +
                              ", max_val=" + repr(hi));
            c.outputs_distinct({{&u.out.a, "out"}}, {{&u.x.a, "x"}});
            dispatch(u.x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                // Bounds beyond the dtype's range become +-inf and clip nothing, like the oracle's.
                hardtanh_forward<T>(u.out.ptr<T>(), u.x.ptr<T>(), vm::narrow<T>(lo), vm::narrow<T>(hi), u.x.size());
            });
        },
        py::arg("out"), py::arg("x"), py::arg("min_val"), py::arg("max_val"),
        "out = clip(x, min_val, max_val); NaN propagates");

    m.def(
        "hardtanh_backward",
        [](py::object dx_, py::object dout_, py::object x_, py::object min_val_, py::object max_val_) {
            Checker c{"hardtanh_backward"};
            UnaryBackward u = unary_backward(c, dx_, dout_, x_);
            const double lo = c.real(min_val_, "min_val"), hi = c.real(max_val_, "max_val");
            if (!(lo < hi))
                c.value_error("argument 'min_val' must be less than 'max_val'; got min_val=" + repr(lo) +
                              ", max_val=" + repr(hi));
            c.outputs_distinct({{&u.dx.a, "dx"}}, {{&u.dout.a, "dout"}, {&u.x.a, "x"}});
            dispatch(u.x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                hardtanh_backward<T>(u.dx.ptr<T>(), u.dout.ptr<T>(), u.x.ptr<T>(), vm::narrow<T>(lo),
                                     vm::narrow<T>(hi), u.x.size());
            });
        },
        py::arg("dx"), py::arg("dout"), py::arg("x"), py::arg("min_val"), py::arg("max_val"),
        "dx = dout strictly inside (min_val, max_val), else 0");

    // ---- count_outside: per-unit counts of entries outside [low, high] (training health)
    m.def(
        "count_outside",
        [](py::object counts_, py::object x_, py::object low_, py::object high_) {
            Checker c{"count_outside"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            py::array counts = int64_array(c, counts_, "counts");
            c.writeable(counts, "counts");
            c.ndim_at_least(x.a, "x", 2);
            c.shape(counts, "counts", {x.dim(1)});
            const double lo = c.real(low_, "low"), hi = c.real(high_, "high");
            // Written as "not (...)" so that a NaN bound is refused too.
            if (!(lo <= hi))
                c.value_error("argument 'low' must be less than or equal to 'high'; got low=" + repr(lo) +
                              ", high=" + repr(hi));
            c.outputs_distinct({{&counts, "counts"}}, {{&x.a, "x"}});
            i64 S = 1;
            for (py::ssize_t i = 2; i < x.a.ndim(); ++i) S *= x.dim(i);
            auto* cnt = static_cast<i64*>(counts.mutable_data());
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                // Bounds beyond the dtype's range become +-inf, like the oracle's.
                count_outside<T>(cnt, x.ptr<T>(), x.dim(0), x.dim(1), S, vm::narrow<T>(lo), vm::narrow<T>(hi));
            });
        },
        py::arg("counts"), py::arg("x"), py::arg("low"), py::arg("high"),
        "counts (C,) int64 += per unit c (axis 1 of x) the entries below low or above high; NaN never counts");

    // ---- softmax over the last axis of (N, K)
    m.def(
        "softmax_forward",
        [](py::object out_, py::object x_) {
            Checker c{"softmax_forward"};
            Unary u = unary(c, out_, x_);
            rows(c, u.x, "x");
            c.outputs_distinct({{&u.out.a, "out"}}, {{&u.x.a, "x"}});
            dispatch(u.x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                softmax_forward<T>(u.out.ptr<T>(), u.x.ptr<T>(), u.x.dim(0), u.x.dim(1));
            });
        },
        py::arg("out"), py::arg("x"), "out (N,K) = softmax over the last axis, with the row maximum subtracted first");

    m.def(
        "softmax_backward",
        [](py::object dx_, py::object dout_, py::object out_) {
            Checker c{"softmax_backward"};
            UnaryBackward u = unary_backward(c, dx_, dout_, out_, "out");
            rows(c, u.x, "out");
            c.outputs_distinct({{&u.dx.a, "dx"}}, {{&u.dout.a, "dout"}, {&u.x.a, "out"}});
            dispatch(u.x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                softmax_backward<T>(u.dx.ptr<T>(), u.dout.ptr<T>(), u.x.ptr<T>(), u.x.dim(0), u.x.dim(1));
            });
        },
        py::arg("dx"), py::arg("dout"), py::arg("out"),
        "dx = y * (dout - sum(dout * y, axis=-1)), y the forward output");

    // ---- maxout
    m.def(
        "maxout_forward",
        [](py::object out_, py::object argmax_, py::object x_, py::object W_, py::object b_) {
            Checker c{"maxout_forward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            MaxoutShapes s = maxout_shapes(c, x, W_);
            Arr b = input(c, b_, "b", x.dtype, "x");
            c.shape(b.a, "b", {s.K, s.M});
            Arr out = output(c, out_, "out", x.dtype, "x");
            c.shape(out.a, "out", {s.N, s.M});
            py::array argmax = int32_array(c, argmax_, "argmax");
            c.writeable(argmax, "argmax");
            c.shape(argmax, "argmax", {s.N, s.M});
            argmax_fits_int32(c, s.K, "the pieces of 'W'");
            c.outputs_distinct({{&out.a, "out"}, {&argmax, "argmax"}}, {{&x.a, "x"}, {&s.W.a, "W"}, {&b.a, "b"}});
            // Every piece's value for every sample, kept to pick the maximum.
            if (s.K > 1) c.scratch_fits({s.N, s.K, s.M}, x.dtype == DType::f32 ? 4 : 8, "the pieces' outputs (N, K, M)");
            auto* am = static_cast<std::int32_t*>(argmax.mutable_data());
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                maxout_forward<T>(out.ptr<T>(), am, x.ptr<T>(), s.W.ptr<T>(), b.ptr<T>(), s.N, s.D, s.K, s.M);
            });
        },
        py::arg("out"), py::arg("argmax"), py::arg("x"), py::arg("W"), py::arg("b"),
        "out (N,M) = max_k (x @ W[k] + b[k]); argmax (N,M) int32 holds the first maximising k");

    m.def(
        "maxout_backward",
        [](py::object dx_, py::object dW_, py::object db_, py::object dout_, py::object x_, py::object W_,
           py::object argmax_) {
            Checker c{"maxout_backward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            MaxoutShapes s = maxout_shapes(c, x, W_);
            Arr dout = input(c, dout_, "dout", x.dtype, "x");
            c.shape(dout.a, "dout", {s.N, s.M});
            py::array argmax = int32_array(c, argmax_, "argmax");
            c.shape(argmax, "argmax", {s.N, s.M});
            const auto* am = static_cast<const std::int32_t*>(argmax.data());
            for (i64 i = 0; i < s.N * s.M; ++i)
                if (am[i] < 0 || am[i] >= s.K)
                    c.value_error("argument 'argmax' holds " + std::to_string(am[i]) + " at flat index " +
                                  std::to_string(i) + "; expected values in [0, " + std::to_string(s.K) + ")");
            auto dx = optional_output(c, dx_, "dx", x.dtype, "x");
            if (dx) c.shape(dx->a, "dx", {s.N, s.D});
            Arr dW = output(c, dW_, "dW", x.dtype, "x");
            c.same_shape(dW.a, "dW", s.W.a, "W");
            Arr db = output(c, db_, "db", x.dtype, "x");
            c.shape(db.a, "db", {s.K, s.M});
            c.outputs_distinct({{&dW.a, "dW"}, {&db.a, "db"}, {dx ? &dx->a : nullptr, "dx"}}, {{&dout.a, "dout"}, {&x.a, "x"}, {&s.W.a, "W"}, {&argmax, "argmax"}});
            c.scratch_fits({s.N, s.K, s.M}, x.dtype == DType::f32 ? 4 : 8, "the pieces' gradients (N, K, M)");
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                maxout_backward<T>(dx ? dx->ptr<T>() : nullptr, dW.ptr<T>(), db.ptr<T>(), dout.ptr<T>(), x.ptr<T>(),
                                   s.W.ptr<T>(), am, s.N, s.D, s.K, s.M);
            });
        },
        py::arg("dx"), py::arg("dW"), py::arg("db"), py::arg("dout"), py::arg("x"), py::arg("W"), py::arg("argmax"),
        "dout routed to the winning piece: dx (N,D) overwritten (None skips it); dW[k] += x.T @ g_k; "
        "db[k] += g_k.sum(0)");

    // ---- RBF
    m.def(
        "rbf_forward",
        [](py::object out_, py::object x_, py::object centers_, py::object widths_) {
            Checker c{"rbf_forward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            RbfShapes s = rbf_shapes(c, x, centers_, widths_);
            Arr out = output(c, out_, "out", x.dtype, "x");
            c.shape(out.a, "out", {s.N, s.M});
            c.outputs_distinct({{&out.a, "out"}}, {{&x.a, "x"}, {&s.centers.a, "centers"}, {&s.widths.a, "widths"}});
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                rbf_forward<T>(out.ptr<T>(), x.ptr<T>(), s.centers.ptr<T>(), s.widths.ptr<T>(), s.N, s.D, s.M);
            });
        },
        py::arg("out"), py::arg("x"), py::arg("centers"), py::arg("widths"),
        "out (N,M) = exp(-||x_n - c_m||^2 / (2 widths_m^2))");

    m.def(
        "rbf_backward",
        [](py::object dx_, py::object dcenters_, py::object dwidths_, py::object dout_, py::object x_,
           py::object centers_, py::object widths_, py::object out_) {
            Checker c{"rbf_backward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            RbfShapes s = rbf_shapes(c, x, centers_, widths_);
            Arr dout = input(c, dout_, "dout", x.dtype, "x");
            c.shape(dout.a, "dout", {s.N, s.M});
            Arr out = input(c, out_, "out", x.dtype, "x");
            c.shape(out.a, "out", {s.N, s.M});
            auto dx = optional_output(c, dx_, "dx", x.dtype, "x");
            if (dx) c.shape(dx->a, "dx", {s.N, s.D});
            Arr dcenters = output(c, dcenters_, "dcenters", x.dtype, "x");
            c.same_shape(dcenters.a, "dcenters", s.centers.a, "centers");
            Arr dwidths = output(c, dwidths_, "dwidths", x.dtype, "x");
            c.same_shape(dwidths.a, "dwidths", s.widths.a, "widths");
            c.outputs_distinct({{&dcenters.a, "dcenters"}, {&dwidths.a, "dwidths"}, {dx ? &dx->a : nullptr, "dx"}},
                               {{&dout.a, "dout"}, {&x.a, "x"}, {&s.centers.a, "centers"}, {&s.widths.a, "widths"},
                               {&out.a, "out"}});
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                rbf_backward<T>(dx ? dx->ptr<T>() : nullptr, dcenters.ptr<T>(), dwidths.ptr<T>(), dout.ptr<T>(),
                                x.ptr<T>(), s.centers.ptr<T>(), s.widths.ptr<T>(), out.ptr<T>(), s.N, s.D, s.M);
            });
        },
        py::arg("dx"), py::arg("dcenters"), py::arg("dwidths"), py::arg("dout"), py::arg("x"), py::arg("centers"),
        py::arg("widths"), py::arg("out"),
        "gradients of rbf_forward given its output: dx overwritten (None skips it); dcenters, dwidths +=");
}

}  // namespace fl::bind
