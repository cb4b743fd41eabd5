#include "checks.h"
#include "kernels.h"

namespace fl::bind {

void bind_relu(py::module_& m) {
    m.def(
        "relu_forward",
        [](py::object out_, py::object x_) {
            Checker c{"relu_forward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            Arr out = output(c, out_, "out", x.dtype, "x");
            c.same_shape(out.a, "out", x.a, "x");
            c.outputs_distinct({{&out.a, "out"}}, {{&x.a, "x"}});
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                relu_forward<T>(out.ptr<T>(), x.ptr<T>(), x.size());
            });
        },
        py::arg("out"), py::arg("x"), "out = max(x, 0), any shape");

    m.def(
        "relu_backward",
        [](py::object dx_, py::object dout_, py::object x_) {
            Checker c{"relu_backward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            Arr dout = input(c, dout_, "dout", x.dtype, "x");
            Arr dx = output(c, dx_, "dx", x.dtype, "x");
            c.same_shape(dout.a, "dout", x.a, "x");
            c.same_shape(dx.a, "dx", x.a, "x");
            c.outputs_distinct({{&dx.a, "dx"}}, {{&dout.a, "dout"}, {&x.a, "x"}});
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                relu_backward<T>(dx.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), x.size());
            });
        },
        py::arg("dx"), py::arg("dout"), py::arg("x"), "dx = dout where x > 0 else 0");
}

}  // namespace fl::bind
