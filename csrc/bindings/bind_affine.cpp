#include "checks.h"
#include "kernels.h"

namespace fl::bind {

namespace {

struct AffineForward {
    Arr out, x, W, b;
    i64 N, D, M;
};

AffineForward check_forward(const char* kernel, py::handle out_, py::handle x_, py::handle W_, py::handle b_) {
    Checker c{kernel};
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
    c.outputs_distinct({{&out.a, "out"}}, {{&x.a, "x"}, {&W.a, "W"}, {&b.a, "b"}});
    return {out, x, W, b, N, D, M};
}

struct AffineBackward {
    std::optional<Arr> dx;
    Arr dW, db, dout, x, W;
    std::optional<Arr> out;
    i64 N, D, M;
};

// out_ is the forward output for the ReLU-fused kernel, None for the plain one.
AffineBackward check_backward(const char* kernel, py::handle dx_, py::handle dW_, py::handle db_, py::handle dout_,
                              py::handle x_, py::handle W_, py::handle out_) {
    Checker c{kernel};
    Arr x = input(c, x_, "x", std::nullopt, nullptr);
    Arr W = input(c, W_, "W", x.dtype, "x");
    Arr dout = input(c, dout_, "dout", x.dtype, "x");
    auto dx = optional_output(c, dx_, "dx", x.dtype, "x");
    Arr dW = output(c, dW_, "dW", x.dtype, "x");
    Arr db = output(c, db_, "db", x.dtype, "x");
    std::optional<Arr> out;
    if (!out_.is_none()) out = input(c, out_, "out", x.dtype, "x");
    c.ndim(x.a, "x", 2);
    const i64 N = x.dim(0), D = x.dim(1);
    c.ndim(W.a, "W", 2);
    c.shape(W.a, "W", {D, -1});
    const i64 M = W.dim(1);
    c.shape(dout.a, "dout", {N, M});
    if (out) c.shape(out->a, "out", {N, M});
    if (dx) c.shape(dx->a, "dx", {N, D});
    c.shape(dW.a, "dW", {D, M});
    c.shape(db.a, "db", {M});
    c.outputs_distinct({{dx ? &dx->a : nullptr, "dx"}, {&dW.a, "dW"}, {&db.a, "db"}},
                       {{&dout.a, "dout"}, {&x.a, "x"}, {&W.a, "W"}, {out ? &out->a : nullptr, "out"}});
    return {dx, dW, db, dout, x, W, out, N, D, M};
}

}  // namespace

void bind_affine(py::module_& m) {
    m.def(
        "affine_forward",
        [](py::object out_, py::object x_, py::object W_, py::object b_) {
            auto a = check_forward("affine_forward", out_, x_, W_, b_);
            dispatch(a.x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                affine_forward<T>(a.out.ptr<T>(), a.x.ptr<T>(), a.W.ptr<T>(), a.b.ptr<T>(), a.N, a.D, a.M);
            });
        },
        py::arg("out"), py::arg("x"), py::arg("W"), py::arg("b"),
        "out (N,M) = x (N,D) @ W (D,M) + b (M,)");

    m.def(
        "affine_backward",
        [](py::object dx_, py::object dW_, py::object db_, py::object dout_, py::object x_, py::object W_) {
            auto a = check_backward("affine_backward", dx_, dW_, db_, dout_, x_, W_, py::none());
            dispatch(a.x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                affine_backward<T>(a.dx ? a.dx->ptr<T>() : nullptr, a.dW.ptr<T>(), a.db.ptr<T>(), a.dout.ptr<T>(),
                                   a.x.ptr<T>(), a.W.ptr<T>(), a.N, a.D, a.M);
            });
        },
        py::arg("dx"), py::arg("dW"), py::arg("db"), py::arg("dout"), py::arg("x"), py::arg("W"),
        "dx (N,D) = dout @ W.T (overwritten; None skips it); dW (D,M) += x.T @ dout; db (M,) += dout.sum(0)");

    m.def(
        "affine_relu_forward",
        [](py::object out_, py::object x_, py::object W_, py::object b_) {
            auto a = check_forward("affine_relu_forward", out_, x_, W_, b_);
            dispatch(a.x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                affine_relu_forward<T>(a.out.ptr<T>(), a.x.ptr<T>(), a.W.ptr<T>(), a.b.ptr<T>(), a.N, a.D, a.M);
            });
        },
        py::arg("out"), py::arg("x"), py::arg("W"), py::arg("b"), "out (N,M) = max(x @ W + b, 0)");

    m.def(
        "affine_relu_backward",
        [](py::object dx_, py::object dW_, py::object db_, py::object dout_, py::object x_, py::object W_,
           py::object out_) {
            if (out_.is_none()) {
                Checker c{"affine_relu_backward"};
                c.type_error("argument 'out' must be a numpy.ndarray, got NoneType");
            }
            auto a = check_backward("affine_relu_backward", dx_, dW_, db_, dout_, x_, W_, out_);
            dispatch(a.x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                affine_relu_backward<T>(a.dx ? a.dx->ptr<T>() : nullptr, a.dW.ptr<T>(), a.db.ptr<T>(),
                                        a.dout.ptr<T>(), a.x.ptr<T>(), a.W.ptr<T>(), a.out->ptr<T>(), a.N, a.D, a.M);
            });
        },
        py::arg("dx"), py::arg("dW"), py::arg("db"), py::arg("dout"), py::arg("x"), py::arg("W"), py::arg("out"),
        "as affine_backward, with dout passed only where the forward output out > 0");
}

}  // namespace fl::bind
