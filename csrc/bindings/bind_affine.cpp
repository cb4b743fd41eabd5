#include "checks.h"
#include "kernels.h"

namespace fl::bind {

void bind_affine(py::module_& m) {
    m.def(
        "affine_forward",
        [](py::object out_, py::object x_, py::object W_, py::object b_) {
            Checker c{"affine_forward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            Arr W = input(c, W_, "W", x.dtype, "x");
            Arr b = input(c, b_, "b", x.dtype, "x");
            Arr out = output(c, out_, "out", x.dtype, "x");
            c.ndim(x.a, "x", 2);
            const i64 N = x.dim(0), D = x.dim(1);
            c.ndim(W.a, "W", 2);
            c.shape(W.a, "W", {D, -1});
            const i64 M = W.dim(1);
            c.shape(b.a, "b", {M});
            c.shape(out.a, "out", {N, M});
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                affine_forward<T>(out.ptr<T>(), x.ptr<T>(), W.ptr<T>(), b.ptr<T>(), N, D, M);
            });
        },
        py::arg("out"), py::arg("x"), py::arg("W"), py::arg("b"),
        "out (N,M) = x (N,D) @ W (D,M) + b (M,)");

    m.def(
        "affine_backward",
        [](py::object dx_, py::object dW_, py::object db_, py::object dout_, py::object x_, py::object W_) {
            Checker c{"affine_backward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            Arr W = input(c, W_, "W", x.dtype, "x");
            Arr dout = input(c, dout_, "dout", x.dtype, "x");
            auto dx = optional_output(c, dx_, "dx", x.dtype, "x");
            Arr dW = output(c, dW_, "dW", x.dtype, "x");
            Arr db = output(c, db_, "db", x.dtype, "x");
            c.ndim(x.a, "x", 2);
            const i64 N = x.dim(0), D = x.dim(1);
            c.ndim(W.a, "W", 2);
            c.shape(W.a, "W", {D, -1});
            const i64 M = W.dim(1);
            c.shape(dout.a, "dout", {N, M});
            if (dx) c.shape(dx->a, "dx", {N, D});
            c.shape(dW.a, "dW", {D, M});
            c.shape(db.a, "db", {M});
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                affine_backward<T>(dx ? dx->ptr<T>() : nullptr, dW.ptr<T>(), db.ptr<T>(), dout.ptr<T>(), x.ptr<T>(),
                                   W.ptr<T>(), N, D, M);
            });
        },
        py::arg("dx"), py::arg("dW"), py::arg("db"), py::arg("dout"), py::arg("x"), py::arg("W"),
        "dx (N,D) = dout @ W.T (overwritten; None skips it); dW (D,M) += x.T @ dout; db (M,) += dout.sum(0)");
}

}  // namespace fl::bind
