#include "checks.h"
#include "kernels.h"

namespace fl::bind {

void bind_warp(py::module_& m) {
    m.def(
        "affine_warp_forward",
        [](py::object out_, py::object x_, py::object theta_, py::object fill_) {
            Checker c{"affine_warp_forward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            Arr out = output(c, out_, "out", x.dtype, "x");
            Arr theta = input(c, theta_, "theta", x.dtype, "x");
            const double fill = c.real(fill_, "fill");
            c.ndim(x.a, "x", 4);
            const i64 N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
            c.same_shape(out.a, "out", x.a, "x");
            c.shape(theta.a, "theta", {N, 2, 3});
            c.outputs_distinct({{&out.a, "out"}}, {{&x.a, "x"}, {&theta.a, "theta"}});
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                affine_warp_forward<T>(out.ptr<T>(), x.ptr<T>(), theta.ptr<T>(), fill, N, C, H, W);
            });
        },
        py::arg("out"), py::arg("x"), py::arg("theta"), py::arg("fill"),
        "out (N,C,H,W) = x (N,C,H,W) sampled bilinearly at theta[n] (N,2,3) applied to each output pixel centre "
        "(x = column, y = row; inverse mapping), fill outside the input");
}

}  // namespace fl::bind
