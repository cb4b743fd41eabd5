#include <cmath>
#include <string>

#include "checks.h"
#include "optim.h"

namespace fl::bind {

namespace {

// Hyper-parameters, validated in the oracle's order and with its conditions
// (fastlayers/reference/optim.py): non-real is a TypeError, out of range a ValueError.
// Rates and eps must be finite: an infinite one turns every weight into inf or NaN (or, for
// eps, silently stops the updates).

double real(const Checker& c, py::handle v, const char* name) {
    // Python floats are by far the common case; everything else goes through the full check.
    if (PyFloat_CheckExact(v.ptr())) return PyFloat_AS_DOUBLE(v.ptr());
    return c.real(v, name);
}

double at_least_zero(const Checker& c, py::handle v, const char* name) {
    const double x = real(c, v, name);
    // Written as "not (...)" so that NaN is refused too.
    if (!(x >= 0 && std::isfinite(x)))
        c.value_error(std::string("argument '") + name + "' must be a finite number >= 0; got " + real_repr(x));
    return x;
}

double positive(const Checker& c, py::handle v, const char* name) {
    const double x = real(c, v, name);
    if (!(x > 0 && std::isfinite(x)))
        c.value_error(std::string("argument '") + name + "' must be a finite number > 0; got " + real_repr(x));
    return x;
}

double fraction(const Checker& c, py::handle v, const char* name) {
    const double x = real(c, v, name);
    if (!(0 <= x && x < 1))
        c.value_error(std::string("argument '") + name + "' must be in [0, 1); got " + real_repr(x));
    return x;
}

// param: a writeable float array; grad and each state array: same dtype and shape. The
// kernels work in place on param and the state, so only overlaps are refused.
Arr param_arg(const Checker& c, py::handle obj) {
    Arr param = input(c, obj, "param", std::nullopt, nullptr);
    c.writeable(param.a, "param");
    return param;
}

Arr grad_arg(const Checker& c, py::handle obj, const Arr& param) {
    Arr grad = input(c, obj, "grad", param.dtype, "param");
    c.same_shape(grad.a, "grad", param.a, "param");
    return grad;
}

Arr state_arg(const Checker& c, py::handle obj, const char* name, const Arr& param) {
    Arr s = output(c, obj, name, param.dtype, "param");
    c.same_shape(s.a, name, param.a, "param");
    return s;
}

// Momentum and Nesterov share their arguments: one velocity state and a momentum in [0, 1).
template <class F32, class F64>
void def_velocity_update(py::module_& m, const char* name, F32 f32, F64 f64, const char* doc) {
    m.def(
        name,
        [name, f32, f64](py::object param_, py::object grad_, py::object v_, py::object lr_, py::object momentum_,
                         py::object wd_, py::object l1_) {
            Checker c{name};
            Arr param = param_arg(c, param_);
            Arr grad = grad_arg(c, grad_, param);
            Arr v = state_arg(c, v_, "v", param);
            c.distinct({{&param.a, "param"}, {&grad.a, "grad"}, {&v.a, "v"}});
            const double lr = at_least_zero(c, lr_, "lr");
            const double momentum = fraction(c, momentum_, "momentum");
            const double wd = at_least_zero(c, wd_, "weight_decay"), l1 = at_least_zero(c, l1_, "l1");
            if (param.dtype == DType::f32) {
                py::gil_scoped_release nogil;
                f32(param.ptr<float>(), grad.ptr<float>(), v.ptr<float>(), param.size(), lr, momentum, wd, l1);
            } else {
                py::gil_scoped_release nogil;
                f64(param.ptr<double>(), grad.ptr<double>(), v.ptr<double>(), param.size(), lr, momentum, wd, l1);
            }
        },
        py::arg("param"), py::arg("grad"), py::arg("v"), py::arg("lr"), py::arg("momentum"),
        py::arg("weight_decay"), py::arg("l1"), doc);
}

}  // namespace

void bind_optim(py::module_& m) {
    m.def(
        "sgd_update",
        [](py::object param_, py::object grad_, py::object lr_, py::object wd_, py::object l1_) {
            Checker c{"sgd_update"};
            Arr param = param_arg(c, param_);
            Arr grad = grad_arg(c, grad_, param);
            c.distinct({{&param.a, "param"}, {&grad.a, "grad"}});
            const double lr = at_least_zero(c, lr_, "lr");
            const double wd = at_least_zero(c, wd_, "weight_decay"), l1 = at_least_zero(c, l1_, "l1");
            dispatch(param.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                sgd_update<T>(param.ptr<T>(), grad.ptr<T>(), param.size(), lr, wd, l1);
            });
        },
        py::arg("param"), py::arg("grad"), py::arg("lr"), py::arg("weight_decay"), py::arg("l1"),
        "param -= lr*g, g = grad + weight_decay*param + l1*sign(param); param in place");

    def_velocity_update(m, "momentum_update", momentum_update<float>, momentum_update<double>,
                        "v = momentum*v - lr*g; param += v (param, v in place)");
    def_velocity_update(m, "nesterov_update", nesterov_update<float>, nesterov_update<double>,
                        "v_prev = v; v = momentum*v - lr*g; param += -momentum*v_prev + (1+momentum)*v "
                        "(param, v in place)");

    m.def(
        "adagrad_update",
        [](py::object param_, py::object grad_, py::object h_, py::object lr_, py::object eps_, py::object wd_,
           py::object l1_) {
            Checker c{"adagrad_update"};
            Arr param = param_arg(c, param_);
            Arr grad = grad_arg(c, grad_, param);
            Arr h = state_arg(c, h_, "h", param);
            c.distinct({{&param.a, "param"}, {&grad.a, "grad"}, {&h.a, "h"}});
            const double lr = at_least_zero(c, lr_, "lr");
            const double eps = positive(c, eps_, "eps");
            const double wd = at_least_zero(c, wd_, "weight_decay"), l1 = at_least_zero(c, l1_, "l1");
            dispatch(param.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                adagrad_update<T>(param.ptr<T>(), grad.ptr<T>(), h.ptr<T>(), param.size(), lr, eps, wd, l1);
            });
        },
        py::arg("param"), py::arg("grad"), py::arg("h"), py::arg("lr"), py::arg("eps"), py::arg("weight_decay"),
        py::arg("l1"), "h += g²; param -= lr*g/(sqrt(h) + eps) (param, h in place)");

    m.def(
        "rmsprop_update",
        [](py::object param_, py::object grad_, py::object h_, py::object lr_, py::object decay_, py::object eps_,
           py::object wd_, py::object l1_) {
            Checker c{"rmsprop_update"};
            Arr param = param_arg(c, param_);
            Arr grad = grad_arg(c, grad_, param);
            Arr h = state_arg(c, h_, "h", param);
            c.distinct({{&param.a, "param"}, {&grad.a, "grad"}, {&h.a, "h"}});
            const double lr = at_least_zero(c, lr_, "lr");
            const double decay = fraction(c, decay_, "decay");
            const double eps = positive(c, eps_, "eps");
            const double wd = at_least_zero(c, wd_, "weight_decay"), l1 = at_least_zero(c, l1_, "l1");
            dispatch(param.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                rmsprop_update<T>(param.ptr<T>(), grad.ptr<T>(), h.ptr<T>(), param.size(), lr, decay, eps, wd, l1);
            });
        },
        py::arg("param"), py::arg("grad"), py::arg("h"), py::arg("lr"), py::arg("decay"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("l1"),
        "h = decay*h + (1-decay)*g²; param -= lr*g/(sqrt(h) + eps) (param, h in place)");

    m.def(
        "adam_update",
        [](py::object param_, py::object grad_, py::object m_, py::object v_, py::object lr_, py::object beta1_,
           py::object beta2_, py::object eps_, py::object step_, py::object wd_, py::object l1_) {
            Checker c{"adam_update"};
            Arr param = param_arg(c, param_);
            Arr grad = grad_arg(c, grad_, param);
            Arr mom = state_arg(c, m_, "m", param);
            Arr v = state_arg(c, v_, "v", param);
            c.distinct({{&param.a, "param"}, {&grad.a, "grad"}, {&mom.a, "m"}, {&v.a, "v"}});
            const double lr = at_least_zero(c, lr_, "lr");
            const double beta1 = fraction(c, beta1_, "beta1");
            const double beta2 = fraction(c, beta2_, "beta2");
            const double eps = positive(c, eps_, "eps");
            const i64 step = c.positive_int(step_, "step");
            const double wd = at_least_zero(c, wd_, "weight_decay"), l1 = at_least_zero(c, l1_, "l1");
            dispatch(param.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                adam_update<T>(param.ptr<T>(), grad.ptr<T>(), mom.ptr<T>(), v.ptr<T>(), param.size(), lr, beta1, beta2,
                               eps, step, wd, l1);
            });
        },
        py::arg("param"), py::arg("grad"), py::arg("m"), py::arg("v"), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("eps"), py::arg("step"), py::arg("weight_decay"), py::arg("l1"),
        "Adam with bias correction (step from 1, eps outside the square root); param, m, v in place");

    m.def(
        "max_norm_update",
        [](py::object w_, py::object max_norm_, py::object axis_) {
            Checker c{"max_norm_update"};
            Arr w = input(c, w_, "w", std::nullopt, nullptr);
            c.writeable(w.a, "w");
            c.ndim(w.a, "w", 2);
            const double max_norm = positive(c, max_norm_, "max_norm");
            const i64 axis = c.nonnegative_int(axis_, "axis");
            if (axis != 0 && axis != 1) c.value_error("argument 'axis' must be 0 or 1; got " + std::to_string(axis));
            dispatch(w.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                max_norm_update<T>(w.ptr<T>(), w.dim(0), w.dim(1), max_norm, static_cast<int>(axis));
            });
        },
        py::arg("w"), py::arg("max_norm"), py::arg("axis"),
        "w (R,C) in place: each column (axis 0) or row (axis 1) with L2 norm > max_norm is rescaled to max_norm");

    m.def(
        "scale_update",
        [](py::object x_, py::object alpha_) {
            Checker c{"scale_update"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            c.writeable(x.a, "x");
            const double alpha = c.finite(alpha_, "alpha");
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                scale_update<T>(x.ptr<T>(), x.size(), alpha);
            });
        },
        py::arg("x"), py::arg("alpha"), "x *= alpha in place (the product in float64, rounded once to x's dtype)");

    m.def(
        "zero_update",
        [](py::object x_) {
            Checker c{"zero_update"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            c.writeable(x.a, "x");
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                zero_update<T>(x.ptr<T>(), x.size());
            });
        },
        py::arg("x"), "x = 0 in place (every entry +0.0)");

    m.def(
        "clamp_update",
        [](py::object x_, py::object limit_) {
            Checker c{"clamp_update"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            c.writeable(x.a, "x");
            const double limit = positive(c, limit_, "limit");
            return dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                return clamp_update<T>(x.ptr<T>(), x.size(), limit);
            });
        },
        py::arg("x"), py::arg("limit"),
        "x clamped in place to [-limit, limit] (limit rounded to x's dtype); returns the number of entries clamped");

    m.def(
        "sum_squares",
        [](py::object x_) {
            Checker c{"sum_squares"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            return dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                return sum_squares<T>(x.ptr<T>(), x.size());
            });
        },
        py::arg("x"), "sum of x², accumulated in float64");

    m.def(
        "sum_abs",
        [](py::object x_) {
            Checker c{"sum_abs"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            return dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                return sum_abs<T>(x.ptr<T>(), x.size());
            });
        },
        py::arg("x"), "sum of |x|, accumulated in float64");

    m.def(
        "sum_squares_diff",
        [](py::object a_, py::object b_) {
            Checker c{"sum_squares_diff"};
            auto [a, b] = input_pair(c, a_, "a", b_, "b");
            return dispatch(a.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                return sum_squares_diff<T>(a.ptr<T>(), b.ptr<T>(), a.size());
            });
        },
        py::arg("a"), py::arg("b"), "sum of (a - b)², the difference and its square formed in float64");
}

}  // namespace fl::bind
