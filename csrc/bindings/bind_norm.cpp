#include <cmath>
#include <iterator>
#include <string>
#include <vector>

#include "checks.h"
#include "norm.h"

namespace fl::bind {

namespace {

using Named = std::pair<const py::array*, const char*>;

// x read as (N,F,S), like the oracle's _bn_layout.
struct Layout {
    i64 N, F, S;
    i64 m() const { return N * S; }
};

Layout bn_layout(const Checker& c, const Arr& x) {
    if (x.a.ndim() == 2) return {x.dim(0), x.dim(1), 1};
    if (x.a.ndim() == 4) return {x.dim(0), x.dim(1), x.dim(2) * x.dim(3)};
    c.value_error("argument 'x' must be 2-D (N,D) or 4-D (N,C,H,W); got shape " + shape_str(x.a));
}

double bn_eps(const Checker& c, py::handle v) {
    const double eps = c.real(v, "eps");
    if (!(eps > 0 && std::isfinite(eps))) c.value_error("argument 'eps' must be a finite number > 0; got " + real_repr(eps));
    return eps;
}

double bn_momentum(const Checker& c, py::handle v) {
    const double momentum = c.real(v, "momentum");
    if (!(momentum >= 0 && momentum <= 1))
        c.value_error("argument 'momentum' must be in [0, 1]; got " + real_repr(momentum));
    return momentum;
}

std::uint32_t dropout_seed(const Checker& c, py::handle v) {
    const bool is_int = !py::isinstance<py::bool_>(v) &&
                        (py::isinstance<py::int_>(v) || py::isinstance(v, py::module_::import("numpy").attr("integer")));
    if (!is_int)
        c.type_error("argument 'seed' must be an int; got " +
                     py::str(py::type::handle_of(v).attr("__name__")).cast<std::string>());
    // Compared as a Python int: a seed beyond 64 bits is out of range, not a conversion error.
    py::int_ s = py::reinterpret_steal<py::int_>(PyNumber_Index(v.ptr()));
    if (!s) throw py::error_already_set();
    const bool in_range = s >= py::int_(0) && s < py::int_(std::uint64_t{1} << 32);
    if (!in_range) c.value_error("argument 'seed' must be in [0, 2**32); got " + py::str(s).cast<std::string>());
    return s.cast<std::uint32_t>();
}

template <bool Relu>
void forward_train(const char* kernel, py::object out_, py::object mean_, py::object invstd_,
                   py::object running_mean_, py::object running_var_, py::object x_, py::object gamma_,
                   py::object beta_, py::object momentum_, py::object eps_) {
    Checker c{kernel};
    Arr x = input(c, x_, "x", std::nullopt, nullptr);
    Arr gamma = input(c, gamma_, "gamma", x.dtype, "x");
    Arr beta = input(c, beta_, "beta", x.dtype, "x");
    Arr out = output(c, out_, "out", x.dtype, "x");
    Arr mean = output(c, mean_, "mean", x.dtype, "x");
    Arr invstd = output(c, invstd_, "invstd", x.dtype, "x");
    Arr rmean = output(c, running_mean_, "running_mean", x.dtype, "x");
    Arr rvar = output(c, running_var_, "running_var", x.dtype, "x");
    const Layout L = bn_layout(c, x);
    for (auto [a, name] : {Named{&gamma.a, "gamma"}, Named{&beta.a, "beta"}, Named{&mean.a, "mean"},
                           Named{&invstd.a, "invstd"}, Named{&rmean.a, "running_mean"},
                           Named{&rvar.a, "running_var"}})
        c.shape(*a, name, {L.F});
    c.same_shape(out.a, "out", x.a, "x");
    const double momentum = bn_momentum(c, momentum_);
    const double eps = bn_eps(c, eps_);
    if (L.m() == 0)
        c.value_error("argument 'x' has no elements per feature (shape " + shape_str(x.a) +
                      "); batch statistics need m >= 1");
    c.outputs_distinct({{&out.a, "out"}, {&mean.a, "mean"}, {&invstd.a, "invstd"}, {&rmean.a, "running_mean"},
                        {&rvar.a, "running_var"}},
                       {{&x.a, "x"}, {&gamma.a, "gamma"}, {&beta.a, "beta"}});
    dispatch(x.dtype, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        auto kernel_fn = Relu ? batchnorm_relu_forward_train<T> : batchnorm_forward_train<T>;
        kernel_fn(out.ptr<T>(), mean.ptr<T>(), invstd.ptr<T>(), rmean.ptr<T>(), rvar.ptr<T>(), x.ptr<T>(),
                  gamma.ptr<T>(), beta.ptr<T>(), momentum, eps, L.N, L.F, L.S);
    });
}

template <bool Relu>
void forward_eval(const char* kernel, py::object out_, py::object x_, py::object gamma_, py::object beta_,
                  py::object running_mean_, py::object running_var_, py::object eps_) {
    Checker c{kernel};
    Arr x = input(c, x_, "x", std::nullopt, nullptr);
    Arr gamma = input(c, gamma_, "gamma", x.dtype, "x");
    Arr beta = input(c, beta_, "beta", x.dtype, "x");
    Arr rmean = input(c, running_mean_, "running_mean", x.dtype, "x");
    Arr rvar = input(c, running_var_, "running_var", x.dtype, "x");
    Arr out = output(c, out_, "out", x.dtype, "x");
    const Layout L = bn_layout(c, x);
    for (auto [a, name] : {Named{&gamma.a, "gamma"}, Named{&beta.a, "beta"}, Named{&rmean.a, "running_mean"},
                           Named{&rvar.a, "running_var"}})
        c.shape(*a, name, {L.F});
    c.same_shape(out.a, "out", x.a, "x");
    const double eps = bn_eps(c, eps_);
    c.outputs_distinct({{&out.a, "out"}},
                       {{&x.a, "x"}, {&gamma.a, "gamma"}, {&beta.a, "beta"}, {&rmean.a, "running_mean"},
                       {&rvar.a, "running_var"}});
    dispatch(x.dtype, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        auto kernel_fn = Relu ? batchnorm_relu_forward_eval<T> : batchnorm_forward_eval<T>;
        kernel_fn(out.ptr<T>(), x.ptr<T>(), gamma.ptr<T>(), beta.ptr<T>(), rmean.ptr<T>(), rvar.ptr<T>(), eps, L.N,
                  L.F, L.S);
    });
}

// out_ is the fused forward's output (Relu only); it gates dout.
template <bool Relu>
void backward(const char* kernel, py::object dx_, py::object dgamma_, py::object dbeta_, py::object dout_,
              py::object x_, py::object gamma_, py::object mean_, py::object invstd_, py::object out_) {
    Checker c{kernel};
    Arr x = input(c, x_, "x", std::nullopt, nullptr);
    Arr dout = input(c, dout_, "dout", x.dtype, "x");
    Arr gamma = input(c, gamma_, "gamma", x.dtype, "x");
    Arr mean = input(c, mean_, "mean", x.dtype, "x");
    Arr invstd = input(c, invstd_, "invstd", x.dtype, "x");
    std::optional<Arr> out;
    if (Relu) out = input(c, out_, "out", x.dtype, "x");
    auto dx = optional_output(c, dx_, "dx", x.dtype, "x");
    Arr dgamma = output(c, dgamma_, "dgamma", x.dtype, "x");
    Arr dbeta = output(c, dbeta_, "dbeta", x.dtype, "x");
    const Layout L = bn_layout(c, x);
    c.same_shape(dout.a, "dout", x.a, "x");
    if (out) c.same_shape(out->a, "out", x.a, "x");
    if (dx) c.same_shape(dx->a, "dx", x.a, "x");
    for (auto [a, name] : {Named{&gamma.a, "gamma"}, Named{&mean.a, "mean"}, Named{&invstd.a, "invstd"},
                           Named{&dgamma.a, "dgamma"}, Named{&dbeta.a, "dbeta"}})
        c.shape(*a, name, {L.F});
    c.outputs_distinct({{dx ? &dx->a : nullptr, "dx"}, {&dgamma.a, "dgamma"}, {&dbeta.a, "dbeta"}},
                       {{&dout.a, "dout"}, {&x.a, "x"}, {&gamma.a, "gamma"}, {&mean.a, "mean"},
                       {&invstd.a, "invstd"}, {out ? &out->a : nullptr, "out"}});
    dispatch(x.dtype, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        T* dxp = dx ? dx->ptr<T>() : nullptr;
        if constexpr (Relu)
            batchnorm_relu_backward<T>(dxp, dgamma.ptr<T>(), dbeta.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), gamma.ptr<T>(),
                                       mean.ptr<T>(), invstd.ptr<T>(), out->template ptr<T>(), L.N, L.F, L.S);
        else
            batchnorm_backward<T>(dxp, dgamma.ptr<T>(), dbeta.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), gamma.ptr<T>(),
                                  mean.ptr<T>(), invstd.ptr<T>(), L.N, L.F, L.S);
    });
}

}  // namespace

void bind_norm(py::module_& m) {
    m.def(
        "batchnorm_forward_train",
        [](py::object out, py::object mean, py::object invstd, py::object running_mean, py::object running_var,
           py::object x, py::object gamma, py::object beta, py::object momentum, py::object eps) {
            forward_train<false>("batchnorm_forward_train", out, mean, invstd, running_mean, running_var, x, gamma,
                                 beta, momentum, eps);
        },
        py::arg("out"), py::arg("mean"), py::arg("invstd"), py::arg("running_mean"), py::arg("running_var"),
        py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("momentum"), py::arg("eps"),
        "Normalises x (N,D) or (N,C,H,W) with the batch statistics; writes mean and invstd; updates running_* "
        "in place");

    m.def(
        "batchnorm_relu_forward_train",
        [](py::object out, py::object mean, py::object invstd, py::object running_mean, py::object running_var,
           py::object x, py::object gamma, py::object beta, py::object momentum, py::object eps) {
            forward_train<true>("batchnorm_relu_forward_train", out, mean, invstd, running_mean, running_var, x,
                                gamma, beta, momentum, eps);
        },
        py::arg("out"), py::arg("mean"), py::arg("invstd"), py::arg("running_mean"), py::arg("running_var"),
        py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("momentum"), py::arg("eps"),
        "out = max(batchnorm_forward_train(...), 0), NaN propagating");

    m.def(
        "batchnorm_forward_eval",
        [](py::object out, py::object x, py::object gamma, py::object beta, py::object running_mean,
           py::object running_var, py::object eps) {
            forward_eval<false>("batchnorm_forward_eval", out, x, gamma, beta, running_mean, running_var, eps);
        },
        py::arg("out"), py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"),
        py::arg("running_var"), py::arg("eps"),
        "out = (x - running_mean) / sqrt(running_var + eps) * gamma + beta");

    m.def(
        "batchnorm_relu_forward_eval",
        [](py::object out, py::object x, py::object gamma, py::object beta, py::object running_mean,
           py::object running_var, py::object eps) {
            forward_eval<true>("batchnorm_relu_forward_eval", out, x, gamma, beta, running_mean, running_var, eps);
        },
        py::arg("out"), py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"),
        py::arg("running_var"), py::arg("eps"), "out = max(batchnorm_forward_eval(...), 0), NaN propagating");

    m.def(
        "batchnorm_backward",
        [](py::object dx, py::object dgamma, py::object dbeta, py::object dout, py::object x, py::object gamma,
           py::object mean, py::object invstd) {
            backward<false>("batchnorm_backward", dx, dgamma, dbeta, dout, x, gamma, mean, invstd, py::none());
        },
        py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"), py::arg("dout"), py::arg("x"), py::arg("gamma"),
        py::arg("mean"), py::arg("invstd"),
        "dx overwritten (None skips it); dgamma += sum(dout * xhat); dbeta += sum(dout)");

    m.def(
        "batchnorm_relu_backward",
        [](py::object dx, py::object dgamma, py::object dbeta, py::object dout, py::object x, py::object gamma,
           py::object mean, py::object invstd, py::object out) {
            backward<true>("batchnorm_relu_backward", dx, dgamma, dbeta, dout, x, gamma, mean, invstd, out);
        },
        py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"), py::arg("dout"), py::arg("x"), py::arg("gamma"),
        py::arg("mean"), py::arg("invstd"), py::arg("out"),
        "batchnorm_backward with dout passed only where the fused forward's out > 0");

    m.def(
        "dropout_forward",
        [](py::object out_, py::object mask_, py::object x_, py::object p_, py::object seed_, py::object scale_) {
            Checker c{"dropout_forward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            Arr out = output(c, out_, "out", x.dtype, "x");
            py::array mask = c.array(mask_, "mask");
            c.uint8(mask, "mask");
            c.writeable(mask, "mask");
            c.same_shape(out.a, "out", x.a, "x");
            c.same_shape(mask, "mask", x.a, "x");
            const double p = c.real(p_, "p");
            if (!(p >= 0 && p < 1)) c.value_error("argument 'p' must be in [0, 1); got " + real_repr(p));
            const std::uint32_t seed = dropout_seed(c, seed_);
            const double scale = c.finite(scale_, "scale");
            c.outputs_distinct({{&out.a, "out"}, {&mask, "mask"}}, {{&x.a, "x"}});
            auto* mk = static_cast<std::uint8_t*>(mask.mutable_data());
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                dropout_forward<T>(out.ptr<T>(), mk, x.ptr<T>(), x.size(), p, seed, scale);
            });
        },
        py::arg("out"), py::arg("mask"), py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("scale"),
        "mask = uniform(seed, i) >= p over the flat index i (uint8); out = x * mask * scale");

    m.def(
        "dropout_backward",
        [](py::object dx_, py::object dout_, py::object mask_, py::object scale_) {
            Checker c{"dropout_backward"};
            Arr dout = input(c, dout_, "dout", std::nullopt, nullptr);
            Arr dx = output(c, dx_, "dx", dout.dtype, "dout");
            py::array mask = c.array(mask_, "mask");
            c.uint8(mask, "mask");
            c.same_shape(dx.a, "dx", dout.a, "dout");
            c.same_shape(mask, "mask", dout.a, "dout");
            const double scale = c.finite(scale_, "scale");
            c.outputs_distinct({{&dx.a, "dx"}}, {{&dout.a, "dout"}, {&mask, "mask"}});
            const auto* mk = static_cast<const std::uint8_t*>(mask.data());
            dispatch(dout.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                dropout_backward<T>(dx.ptr<T>(), dout.ptr<T>(), mk, dout.size(), scale);
            });
        },
        py::arg("dx"), py::arg("dout"), py::arg("mask"), py::arg("scale"), "dx = dout * mask * scale");

    m.def(
        "scale_forward",
        [](py::object out_, py::object x_, py::object alpha_) {
            Checker c{"scale_forward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            Arr out = output(c, out_, "out", x.dtype, "x");
            c.same_shape(out.a, "out", x.a, "x");
            const double alpha = c.finite(alpha_, "alpha");
            c.outputs_distinct({{&out.a, "out"}}, {{&x.a, "x"}});
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                scale_forward<T>(out.ptr<T>(), x.ptr<T>(), x.size(), alpha);
            });
        },
        py::arg("out"), py::arg("x"), py::arg("alpha"), "out = alpha * x");
}

}  // namespace fl::bind
