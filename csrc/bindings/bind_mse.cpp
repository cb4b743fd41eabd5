#include "checks.h"
#include "losses.h"

namespace fl::bind {

void bind_mse(py::module_& m) {
    m.def(
        "mse_forward",
        [](py::object y_, py::object t_) {
            Checker c{"mse_forward"};
            Arr y = input(c, y_, "y", std::nullopt, nullptr);
            Arr t = input(c, t_, "t", y.dtype, "y");
            c.ndim_at_least(y.a, "y", 1);
            c.same_shape(t.a, "t", y.a, "y");
            return dispatch(y.dtype, [&](auto tag) {
                using T = decltype(tag);
                py::gil_scoped_release nogil;
                return mse_forward<T>(y.ptr<T>(), t.ptr<T>(), y.dim(0), y.size());
            });
        },
        py::arg("y"), py::arg("t"), "0.5 * sum((y - t)^2) / N for y, t of shape (N, ...), accumulated in float64");

    m.def(
        "mse_backward",
        [](py::object dy_, py::object y_, py::object t_, py::object dloss_) {
            Checker c{"mse_backward"};
            Arr y = input(c, y_, "y", std::nullopt, nullptr);
            Arr t = input(c, t_, "t", y.dtype, "y");
            Arr dy = output(c, dy_, "dy", y.dtype, "y");
            c.ndim_at_least(y.a, "y", 1);
            c.same_shape(t.a, "t", y.a, "y");
            c.same_shape(dy.a, "dy", y.a, "y");
            const double dloss = c.real(dloss_, "dloss");
            // y and t may be one array; dy may share memory with neither.
            c.outputs_distinct({{&dy.a, "dy"}}, {{&y.a, "y"}, {&t.a, "t"}});
            dispatch(y.dtype, [&](auto tag) {
                using T = decltype(tag);
                py::gil_scoped_release nogil;
                mse_backward<T>(dy.ptr<T>(), y.ptr<T>(), t.ptr<T>(), dloss, y.dim(0), y.size());
            });
        },
        py::arg("dy"), py::arg("y"), py::arg("t"), py::arg("dloss") = 1.0, "dy = dloss * (y - t) / N");
}

}  // namespace fl::bind
