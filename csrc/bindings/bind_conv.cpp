#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "checks.h"
#include "conv.h"

namespace fl::bind {

namespace {

// stride, pad and the output size, validated like fastlayers.reference.conv._geometry
// (g.H, g.W, g.FH, g.FW already set).
void geometry(const Checker& c, ConvGeometry& g, py::handle stride, py::handle pad, const char* x_name) {
    g.stride = c.positive_int(stride, "stride");
    g.pad = c.nonnegative_int(pad, "pad");
    // A padded plane beyond int64 cannot be indexed. The oracle refuses such a pad with a
    // ValueError too (the output shape cannot match, or numpy cannot build the padded copy).
    if (g.pad > (std::numeric_limits<i64>::max() - std::max(g.H, g.W)) / 2)
        c.value_error("argument 'pad' = " + std::to_string(g.pad) + " makes the padded plane (H + 2*pad, W + 2*pad)" +
                      " larger than a 64-bit integer (H=" + std::to_string(g.H) + ", W=" + std::to_string(g.W) + ")");
    const i64 Hp = g.H + 2 * g.pad, Wp = g.W + 2 * g.pad;
    if (Hp < g.FH || Wp < g.FW)
        c.value_error(std::string("argument '") + x_name + "' has a padded plane of (" + std::to_string(Hp) + ", " +
                      std::to_string(Wp) + ") (H=" + std::to_string(g.H) + ", W=" + std::to_string(g.W) +
                      ", pad=" + std::to_string(g.pad) + "); expected at least the window (" + std::to_string(g.FH) +
                      ", " + std::to_string(g.FW) + ")");
    g.OH = (Hp - g.FH) / g.stride + 1;
    g.OW = (Wp - g.FW) / g.stride + 1;
}

// col must be (N*OH*OW, C*FH*FW). An expected size beyond int64 cannot match any array, so
// it is the same shape error (ValueError) the oracle raises, not an overflow.
void col_shape(const Checker& c, const py::array& col, const ConvGeometry& g) {
    i64 rows = 0, cols = 0;
    try {
        rows = checked_mul(checked_mul(g.N, g.OH, "N*OH"), g.OW, "N*OH*OW");
        cols = checked_mul(checked_mul(g.C, g.FH, "C*FH"), g.FW, "C*FH*FW");
    } catch (const std::overflow_error& e) {
        c.value_error("argument 'col' has shape " + shape_str(col) + "; expected (N*OH*OW, C*FH*FW) with N=" +
                      std::to_string(g.N) + ", OH=" + std::to_string(g.OH) + ", OW=" + std::to_string(g.OW) +
                      ", C=" + std::to_string(g.C) + ", FH=" + std::to_string(g.FH) + ", FW=" +
                      std::to_string(g.FW) + " (" + e.what() + ")");
    }
    c.shape(col, "col", {rows, cols});
}

// The geometry of im2col / col2im from the image-shaped array (x, or dx) and the window,
// with col's shape checked against it.
ConvGeometry col_geometry(const Checker& c, const Arr& image, const char* image_name, const Arr& col, py::handle FH,
                          py::handle FW, py::handle stride, py::handle pad) {
    c.ndim(image.a, image_name, 4);
    ConvGeometry g{};
    g.N = image.dim(0);
    g.C = image.dim(1);
    g.H = image.dim(2);
    g.W = image.dim(3);
    g.FH = c.positive_int(FH, "FH");
    g.FW = c.positive_int(FW, "FW");
    geometry(c, g, stride, pad, image_name);
    col_shape(c, col.a, g);
    return g;
}

// x (N,C,H,W) and W (FN,C,FH,FW), like reference.conv._conv_args plus the non-empty filter check.
ConvGeometry conv_args(const Checker& c, const Arr& x, const Arr& W) {
    c.ndim(x.a, "x", 4);
    ConvGeometry g{};
    g.N = x.dim(0);
    g.C = x.dim(1);
    g.H = x.dim(2);
    g.W = x.dim(3);
    c.ndim(W.a, "W", 4);
    c.shape(W.a, "W", {-1, g.C, -1, -1});
    g.FN = W.dim(0);
    g.FH = W.dim(2);
    g.FW = W.dim(3);
    return g;
}

void nonempty_filter(const Checker& c, const Arr& W, const ConvGeometry& g) {
    if (g.FH < 1 || g.FW < 1)
        c.value_error("argument 'W' must have a non-empty filter; got shape " + shape_str(W.a));
}

// conv_args, a non-empty filter, then the validated stride, pad and output size.
ConvGeometry checked_conv(const Checker& c, const Arr& x, const Arr& W, py::handle stride, py::handle pad) {
    ConvGeometry g = conv_args(c, x, W);
    nonempty_filter(c, W, g);
    geometry(c, g, stride, pad, "x");
    return g;
}

template <bool Relu>
void forward(const char* kernel, py::object out_, py::object x_, py::object W_, py::object b_, py::object stride,
             py::object pad) {
    Checker c{kernel};
    Arr x = input(c, x_, "x", std::nullopt, nullptr);
    Arr W = input(c, W_, "W", x.dtype, "x");
    Arr b = input(c, b_, "b", x.dtype, "x");
    Arr out = output(c, out_, "out", x.dtype, "x");
    ConvGeometry g = conv_args(c, x, W);
    c.shape(b.a, "b", {g.FN});
    nonempty_filter(c, W, g);
    geometry(c, g, stride, pad, "x");
    c.shape(out.a, "out", {g.N, g.FN, g.OH, g.OW});
    c.outputs_distinct({{&out.a, "out"}}, {{&x.a, "x"}, {&W.a, "W"}, {&b.a, "b"}});
    dispatch(x.dtype, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        if (Relu)
            conv2d_relu_forward<T>(out.ptr<T>(), x.ptr<T>(), W.ptr<T>(), b.ptr<T>(), g);
        else
            conv2d_forward<T>(out.ptr<T>(), x.ptr<T>(), W.ptr<T>(), b.ptr<T>(), g);
    });
}

template <bool Relu>
void backward(const char* kernel, py::object dx_, py::object dW_, py::object db_, py::object dout_, py::object x_,
              py::object W_, py::object out_, py::object stride, py::object pad) {
    Checker c{kernel};
    Arr x = input(c, x_, "x", std::nullopt, nullptr);
    Arr W = input(c, W_, "W", x.dtype, "x");
    Arr dout = input(c, dout_, "dout", x.dtype, "x");
    std::optional<Arr> out;
    if (Relu) out = input(c, out_, "out", x.dtype, "x");
    auto dx = optional_output(c, dx_, "dx", x.dtype, "x");
    Arr dW = output(c, dW_, "dW", x.dtype, "x");
    Arr db = output(c, db_, "db", x.dtype, "x");
    ConvGeometry g = checked_conv(c, x, W, stride, pad);
    c.shape(dout.a, "dout", {g.N, g.FN, g.OH, g.OW});
    if (out) c.same_shape(out->a, "out", dout.a, "dout");
    if (dx) c.same_shape(dx->a, "dx", x.a, "x");
    c.same_shape(dW.a, "dW", W.a, "W");
    c.shape(db.a, "db", {g.FN});
    c.outputs_distinct({{dx ? &dx->a : nullptr, "dx"}, {&dW.a, "dW"}, {&db.a, "db"}},
                       {{&dout.a, "dout"}, {&x.a, "x"}, {&W.a, "W"}, {out ? &out->a : nullptr, "out"}});
    dispatch(x.dtype, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        T* dxp = dx ? dx->ptr<T>() : nullptr;
        if (Relu)
            conv2d_relu_backward<T>(dxp, dW.ptr<T>(), db.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), W.ptr<T>(),
                                    out->ptr<T>(), g);
        else
            conv2d_backward<T>(dxp, dW.ptr<T>(), db.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), W.ptr<T>(), g);
    });
}

// conv2d_relu_maxpool2d_*: the convolution's checks, then the pooling's over its output plane.
void conv_pool_forward(py::object out_, py::object argmax_, py::object x_, py::object W_, py::object b_,
                       py::object stride, py::object pad, py::object PH, py::object PW, py::object pool_stride,
                       py::object pool_pad) {
    Checker c{"conv2d_relu_maxpool2d_forward"};
    Arr x = input(c, x_, "x", std::nullopt, nullptr);
    Arr W = input(c, W_, "W", x.dtype, "x");
    Arr b = input(c, b_, "b", x.dtype, "x");
    Arr out = output(c, out_, "out", x.dtype, "x");
    py::array argmax = int32_array(c, argmax_, "argmax");
    c.writeable(argmax, "argmax");
    ConvGeometry g = checked_conv(c, x, W, stride, pad);
    const PoolGeometry pg = pool_geometry(c, g.N, g.FN, g.OH, g.OW, PH, PW, pool_stride, pool_pad, nullptr,
                                          "pool_stride", "pool_pad");
    argmax_fits_int32(c, plane_pixels(g.OH, g.OW), "the convolution's (OH, OW) output plane");
    c.shape(b.a, "b", {g.FN});
    c.shape(out.a, "out", {g.N, g.FN, pg.OH, pg.OW});
    c.shape(argmax, "argmax", {g.N, g.FN, pg.OH, pg.OW});
    c.outputs_distinct({{&out.a, "out"}, {&argmax, "argmax"}}, {{&x.a, "x"}, {&W.a, "W"}, {&b.a, "b"}});
    // The pooled output can be small while the convolution output behind it is not (a pooling
    // stride far larger than the window); the kernel keeps that one per image.
    if (g.N > 0) c.scratch_fits({g.FN, g.OH, g.OW}, x.dtype == DType::f32 ? 4 : 8, "the convolution output of one image");
    auto* am = static_cast<std::int32_t*>(argmax.mutable_data());
    dispatch(x.dtype, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        conv2d_relu_maxpool2d_forward<T>(out.ptr<T>(), am, x.ptr<T>(), W.ptr<T>(), b.ptr<T>(), g, pg);
    });
}

void conv_pool_backward(py::object dx_, py::object dW_, py::object db_, py::object dout_, py::object x_,
                        py::object W_, py::object out_, py::object argmax_, py::object stride, py::object pad) {
    Checker c{"conv2d_relu_maxpool2d_backward"};
    Arr x = input(c, x_, "x", std::nullopt, nullptr);
    Arr W = input(c, W_, "W", x.dtype, "x");
    Arr dout = input(c, dout_, "dout", x.dtype, "x");
    Arr out = input(c, out_, "out", x.dtype, "x");
    py::array argmax = int32_array(c, argmax_, "argmax");
    auto dx = optional_output(c, dx_, "dx", x.dtype, "x");
    Arr dW = output(c, dW_, "dW", x.dtype, "x");
    Arr db = output(c, db_, "db", x.dtype, "x");
    ConvGeometry g = checked_conv(c, x, W, stride, pad);
    c.ndim(dout.a, "dout", 4);
    c.shape(dout.a, "dout", {g.N, g.FN, -1, -1});
    c.same_shape(out.a, "out", dout.a, "dout");
    c.same_shape(argmax, "argmax", dout.a, "dout");
    if (g.N > 0 && g.FN > 0)
        c.scratch_fits({g.FN, g.OH, g.OW}, x.dtype == DType::f32 ? 4 : 8, "the convolution gradient of one image");
    const i64 plane = plane_pixels(g.OH, g.OW);
    argmax_in_range(c, argmax, plane);
    const auto* am = static_cast<const std::int32_t*>(argmax.data());
    if (dx) c.same_shape(dx->a, "dx", x.a, "x");
    c.same_shape(dW.a, "dW", W.a, "W");
    c.shape(db.a, "db", {g.FN});
    c.outputs_distinct({{dx ? &dx->a : nullptr, "dx"}, {&dW.a, "dW"}, {&db.a, "db"}},
                       {{&dout.a, "dout"}, {&x.a, "x"}, {&W.a, "W"}, {&out.a, "out"}, {&argmax, "argmax"}});
    dispatch(x.dtype, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        conv2d_relu_maxpool2d_backward<T>(dx ? dx->ptr<T>() : nullptr, dW.ptr<T>(), db.ptr<T>(), dout.ptr<T>(),
                                          x.ptr<T>(), W.ptr<T>(), out.ptr<T>(), am, dout.dim(2), dout.dim(3), g);
    });
}

}  // namespace

void bind_conv(py::module_& m) {
    m.def(
        "im2col",
        [](py::object col_, py::object x_, py::object FH, py::object FW, py::object stride, py::object pad) {
            Checker c{"im2col"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            Arr col = output(c, col_, "col", x.dtype, "x");
            const ConvGeometry g = col_geometry(c, x, "x", col, FH, FW, stride, pad);
            c.outputs_distinct({{&col.a, "col"}}, {{&x.a, "x"}});
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                im2col<T>(col.ptr<T>(), x.ptr<T>(), g);
            });
        },
        py::arg("col"), py::arg("x"), py::arg("FH"), py::arg("FW"), py::arg("stride"), py::arg("pad"),
        "col (N*OH*OW, C*FH*FW) from x (N,C,H,W): row (n*OH + oh)*OW + ow, column (c*FH + i)*FW + j");

    m.def(
        "col2im",
        [](py::object dx_, py::object col_, py::object FH, py::object FW, py::object stride, py::object pad) {
            Checker c{"col2im"};
            Arr col = input(c, col_, "col", std::nullopt, nullptr);
            Arr dx = output(c, dx_, "dx", col.dtype, "col");
            const ConvGeometry g = col_geometry(c, dx, "dx", col, FH, FW, stride, pad);
            c.outputs_distinct({{&dx.a, "dx"}}, {{&col.a, "col"}});
            dispatch(col.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                col2im<T>(dx.ptr<T>(), col.ptr<T>(), g);
            });
        },
        py::arg("dx"), py::arg("col"), py::arg("FH"), py::arg("FW"), py::arg("stride"), py::arg("pad"),
        "dx (N,C,H,W) = the adjoint of im2col applied to col (overwritten; padding dropped)");

    m.def(
        "conv2d_forward",
        [](py::object out, py::object x, py::object W, py::object b, py::object stride, py::object pad) {
            forward<false>("conv2d_forward", out, x, W, b, stride, pad);
        },
        py::arg("out"), py::arg("x"), py::arg("W"), py::arg("b"), py::arg("stride"), py::arg("pad"),
        "out (N,FN,OH,OW) = x (N,C,H,W) cross-correlated with W (FN,C,FH,FW), plus b (FN,)");

    m.def(
        "conv2d_relu_forward",
        [](py::object out, py::object x, py::object W, py::object b, py::object stride, py::object pad) {
            forward<true>("conv2d_relu_forward", out, x, W, b, stride, pad);
        },
        py::arg("out"), py::arg("x"), py::arg("W"), py::arg("b"), py::arg("stride"), py::arg("pad"),
        "out = max(conv2d_forward(x, W, b), 0), NaN propagating");

    m.def(
        "conv2d_backward",
        [](py::object dx, py::object dW, py::object db, py::object dout, py::object x, py::object W, py::object stride,
           py::object pad) {
            backward<false>("conv2d_backward", dx, dW, db, dout, x, W, py::none(), stride, pad);
        },
        py::arg("dx"), py::arg("dW"), py::arg("db"), py::arg("dout"), py::arg("x"), py::arg("W"), py::arg("stride"),
        py::arg("pad"), "dx (N,C,H,W) overwritten (None skips it); dW (FN,C,FH,FW) +=; db (FN,) +=");

    m.def(
        "conv2d_relu_backward",
        [](py::object dx, py::object dW, py::object db, py::object dout, py::object x, py::object W, py::object out,
           py::object stride, py::object pad) {
            backward<true>("conv2d_relu_backward", dx, dW, db, dout, x, W, out, stride, pad);
        },
        py::arg("dx"), py::arg("dW"), py::arg("db"), py::arg("dout"), py::arg("x"), py::arg("W"), py::arg("out"),
        py::arg("stride"), py::arg("pad"),
        "conv2d_backward with dout replaced by (dout where out > 0, else 0); out is the fused forward's output");


    m.def("conv2d_relu_maxpool2d_forward", &conv_pool_forward, py::arg("out"), py::arg("argmax"), py::arg("x"),
          py::arg("W"), py::arg("b"), py::arg("stride"), py::arg("pad"), py::arg("PH"), py::arg("PW"),
          py::arg("pool_stride"), py::arg("pool_pad"),
          "out, argmax (N,FN,POH,POW) = maxpool2d_forward(conv2d_relu_forward(x, W, b)); the convolution's output "
          "is never stored, argmax indexes its (OH,OW) planes");
    m.def("conv2d_relu_maxpool2d_backward", &conv_pool_backward, py::arg("dx"), py::arg("dW"), py::arg("db"),
          py::arg("dout"), py::arg("x"), py::arg("W"), py::arg("out"), py::arg("argmax"), py::arg("stride"),
          py::arg("pad"),
          "backward of conv2d_relu_maxpool2d_forward: dout to the argmax, kept where out > 0, then "
          "conv2d_backward (dx overwritten, None skips it; dW, db +=)");
}

}  // namespace fl::bind
