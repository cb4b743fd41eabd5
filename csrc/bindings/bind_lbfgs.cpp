// Bindings of the L-BFGS kernels (csrc/lbfgs.h); checks as in fastlayers/reference/lbfgs.py.
#include <cmath>
#include <string>

#include "checks.h"
#include "lbfgs.h"

namespace fl::bind {

void bind_lbfgs(py::module_& m) {
    m.def(
        "dot",
        [](py::object x_, py::object y_) {
            Checker c{"dot"};
            auto [x, y] = input_pair(c, x_, "x", y_, "y");
            return dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                return dot<T>(x.ptr<T>(), y.ptr<T>(), x.size());
            });
        },
        py::arg("x"), py::arg("y"), "sum of x*y, accumulated in float64");

    m.def(
        "max_abs",
        [](py::object x_) {
            Checker c{"max_abs"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            return dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                return max_abs<T>(x.ptr<T>(), x.size());
            });
        },
        py::arg("x"), "max |x| (NaN if any entry is NaN, 0 for an empty array)");

    m.def(
        "add_scaled_forward",
        [](py::object out_, py::object x_, py::object y_, py::object alpha_) {
            Checker c{"add_scaled_forward"};
            auto [x, y] = input_pair(c, x_, "x", y_, "y");
            Arr out = output(c, out_, "out", x.dtype, "x");
            c.same_shape(out.a, "out", x.a, "x");
            const double alpha = c.finite(alpha_, "alpha");
            c.outputs_distinct({{&out.a, "out"}}, {{&x.a, "x"}, {&y.a, "y"}});
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                add_scaled_forward<T>(out.ptr<T>(), x.ptr<T>(), y.ptr<T>(), x.size(), alpha);
            });
        },
        py::arg("out"), py::arg("x"), py::arg("y"), py::arg("alpha"), "out = x + alpha*y");

    m.def(
        "lbfgs_direction",
        [](py::object d_, py::object g_, py::object s_, py::object y_, py::object rho_, py::object gamma_,
           py::object first_) {
            Checker c{"lbfgs_direction"};
            Arr g = input(c, g_, "g", std::nullopt, nullptr);
            c.ndim(g.a, "g", 1);
            const i64 n = g.dim(0);
            Arr s = input(c, s_, "s", g.dtype, "g");
            c.shape(s.a, "s", {-1, n});
            const i64 K = s.dim(0);
            Arr y = input(c, y_, "y", g.dtype, "g");
            c.same_shape(y.a, "y", s.a, "s");
            Arr rho = input(c, rho_, "rho", g.dtype, "g");
            c.shape(rho.a, "rho", {K});
            Arr d = output(c, d_, "d", g.dtype, "g");
            c.same_shape(d.a, "d", g.a, "g");
            const double gamma = c.finite(gamma_, "gamma");
            if (!(gamma > 0))
                c.value_error("argument 'gamma' must be a finite number > 0; got " + real_repr(gamma));
            const i64 first = c.nonnegative_int(first_, "first");
            if (first >= (K > 0 ? K : 1))
                c.value_error("argument 'first' must be < K = " + std::to_string(K) +
                              ", the number of pairs in 's' (0 when there are none); got " + std::to_string(first));
            c.outputs_distinct({{&d.a, "d"}}, {{&g.a, "g"}, {&s.a, "s"}, {&y.a, "y"}, {&rho.a, "rho"}});
            dispatch(g.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                lbfgs_direction<T>(d.ptr<T>(), g.ptr<T>(), s.ptr<T>(), y.ptr<T>(), rho.ptr<T>(), K, n, gamma, first);
            });
        },
        py::arg("d"), py::arg("g"), py::arg("s"), py::arg("y"), py::arg("rho"), py::arg("gamma"), py::arg("first"),
        "d = -H g: the L-BFGS two-loop recursion over the (s, y) pairs taken from row `first` on, "
        "rho = 1/(y.s), initial inverse Hessian gamma*I");
}

}  // namespace fl::bind
