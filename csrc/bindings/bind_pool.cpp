#include <algorithm>
#include <limits>
#include <string>

#include "checks.h"
#include "isa_dispatch.h"
#include "pool.h"

namespace fl::bind {

namespace {

// H + 2*pad for the error message, saturated instead of overflowing for absurd paddings.
i64 padded(i64 H, i64 pad) {
    i64 twice, sum;
    if (__builtin_mul_overflow(pad, i64{2}, &twice) || __builtin_add_overflow(H, twice, &sum))
        return std::numeric_limits<i64>::max();
    return sum;
}

// True when H + 2*pad < P, computed without forming H + 2*pad (which may overflow).
bool padded_too_small(i64 H, i64 pad, i64 P) {
    if (pad >= (P + 1) / 2) return false;  // 2*pad >= P already
    return H < P - 2 * pad;
}

}  // namespace

i64 plane_pixels(i64 H, i64 W) {
    i64 r;
    return __builtin_mul_overflow(H, W, &r) ? std::numeric_limits<i64>::max() : r;
}

py::array int64_array(const Checker& c, py::handle obj, const char* name) {
    py::array a = c.array(obj, name);
    c.int64(a, name);
    return a;
}

py::array int32_array(const Checker& c, py::handle obj, const char* name) {
    py::array a = c.array(obj, name);
    c.int32(a, name);
    return a;
}

void argmax_fits_int32(const Checker& c, i64 count, const std::string& what) {
    if (count - 1 > std::numeric_limits<std::int32_t>::max())
        c.value_error("the argmax indices of " + what + " (" + std::to_string(count) +
                      ") do not fit its dtype int32; expected at most 2**31");
}

void argmax_in_range(const Checker& c, const py::array& argmax, i64 plane) {
    const auto* am = static_cast<const std::int32_t*>(argmax.data());
    std::int32_t lo = 0, hi = 0;
    {
        py::gil_scoped_release nogil;
        maxpool2d_argmax_range(am, static_cast<i64>(argmax.size()), &lo, &hi);
    }
    if (argmax.size() > 0 && (lo < 0 || hi >= plane))
        c.value_error("argument 'argmax' holds index " + std::to_string(lo < 0 ? lo : hi) +
                      "; expected indices in [0, " + std::to_string(plane) + ")");
}

// The validated window, stride, padding and output size of an H x W input, as the oracle's
// _geometry and _pool_pad check them (same conditions, same order).
PoolGeometry pool_geometry(const Checker& c, i64 N, i64 C, i64 H, i64 W, py::handle PH_, py::handle PW_,
                           py::handle stride_, py::handle pad_, const char* x_name, const char* stride_name,
                           const char* pad_name) {
    const i64 PH = c.positive_int(PH_, "PH");
    const i64 PW = c.positive_int(PW_, "PW");
    const i64 stride = c.positive_int(stride_, stride_name);
    const i64 pad = c.nonnegative_int(pad_, pad_name);
    if (padded_too_small(H, pad, PH) || padded_too_small(W, pad, PW))
        c.value_error((x_name ? std::string("argument '") + x_name + "'" : std::string("the convolution output of 'x'")) +
                      " has a padded plane of (" + std::to_string(padded(H, pad)) + ", " + std::to_string(padded(W, pad)) +
                      ") (H=" + std::to_string(H) + ", W=" + std::to_string(W) + ", " + pad_name + "=" +
                      std::to_string(pad) + "); expected at least the window (" + std::to_string(PH) + ", " +
                      std::to_string(PW) + ")");
    // Keeps at least one real element in every window (PyTorch's rule).
    if (pad > PH / 2 || pad > PW / 2)
        c.value_error(std::string("argument '") + pad_name + "' must be <= PH // 2 and <= PW // 2 = " +
                      std::to_string(std::min(PH / 2, PW / 2)) + " for a (" + std::to_string(PH) + ", " +
                      std::to_string(PW) + ") window; got " + std::to_string(pad));
    // Now 2*pad <= PH and H + 2*pad >= PH, so H - (PH - 2*pad) is in [0, H]: no overflow.
    const i64 OH = (H - (PH - 2 * pad)) / stride + 1;
    const i64 OW = (W - (PW - 2 * pad)) / stride + 1;
    return {N, C, H, W, PH, PW, stride, pad, OH, OW};
}

void bind_pool(py::module_& m) {
    // Private: which build of the dispatched loops runs (see isa_dispatch.h); tests use it to
    // show that FASTLAYERS_DISABLE_AVX512 reached the baseline build.
    m.def("_isa_dispatch", [] { return cpu_has_avx512() ? "avx512" : "baseline"; });

    m.def(
        "maxpool2d_forward",
        [](py::object out_, py::object argmax_, py::object x_, py::object PH, py::object PW, py::object stride,
           py::object pad) {
            Checker c{"maxpool2d_forward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            Arr out = output(c, out_, "out", x.dtype, "x");
            py::array argmax = int32_array(c, argmax_, "argmax");
            c.writeable(argmax, "argmax");
            c.ndim(x.a, "x", 4);
            const PoolGeometry g = pool_geometry(c, x.dim(0), x.dim(1), x.dim(2), x.dim(3), PH, PW, stride, pad, "x");
            argmax_fits_int32(c, plane_pixels(g.H, g.W), "an (H, W) plane of 'x'");
            c.shape(out.a, "out", {g.N, g.C, g.OH, g.OW});
            c.shape(argmax, "argmax", {g.N, g.C, g.OH, g.OW});
            c.outputs_distinct({{&out.a, "out"}, {&argmax, "argmax"}}, {{&x.a, "x"}});
            auto* am = static_cast<std::int32_t*>(argmax.mutable_data());
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                maxpool2d_forward<T>(out.ptr<T>(), am, x.ptr<T>(), g);
            });
        },
        py::arg("out"), py::arg("argmax"), py::arg("x"), py::arg("PH"), py::arg("PW"), py::arg("stride"),
        py::arg("pad"),
        "out (N,C,OH,OW) = window maxima of x (N,C,H,W) (NaN wins); argmax (N,C,OH,OW) int32 = flat h*W + w of "
        "the element chosen");

    m.def(
        "maxpool2d_backward",
        [](py::object dx_, py::object dout_, py::object argmax_) {
            Checker c{"maxpool2d_backward"};
            Arr dout = input(c, dout_, "dout", std::nullopt, nullptr);
            Arr dx = output(c, dx_, "dx", dout.dtype, "dout");
            py::array argmax = int32_array(c, argmax_, "argmax");
            c.ndim(dx.a, "dx", 4);
            const i64 N = dx.dim(0), C = dx.dim(1), H = dx.dim(2), W = dx.dim(3);
            c.ndim(dout.a, "dout", 4);
            c.shape(dout.a, "dout", {N, C, -1, -1});
            c.same_shape(argmax, "argmax", dout.a, "dout");
            argmax_in_range(c, argmax, plane_pixels(H, W));
            const auto* am = static_cast<const std::int32_t*>(argmax.data());
            c.outputs_distinct({{&dx.a, "dx"}}, {{&dout.a, "dout"}, {&argmax, "argmax"}});
            dispatch(dout.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                maxpool2d_backward<T>(dx.ptr<T>(), dout.ptr<T>(), am, N, C, H, W, dout.dim(2), dout.dim(3));
            });
        },
        py::arg("dx"), py::arg("dout"), py::arg("argmax"),
        "dx (N,C,H,W) overwritten: each dout (N,C,OH,OW) entry added at its argmax");

    m.def(
        "avgpool2d_forward",
        [](py::object out_, py::object x_, py::object PH, py::object PW, py::object stride, py::object pad) {
            Checker c{"avgpool2d_forward"};
            Arr x = input(c, x_, "x", std::nullopt, nullptr);
            Arr out = output(c, out_, "out", x.dtype, "x");
            c.ndim(x.a, "x", 4);
            const PoolGeometry g = pool_geometry(c, x.dim(0), x.dim(1), x.dim(2), x.dim(3), PH, PW, stride, pad, "x");
            c.shape(out.a, "out", {g.N, g.C, g.OH, g.OW});
            c.outputs_distinct({{&out.a, "out"}}, {{&x.a, "x"}});
            dispatch(x.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                avgpool2d_forward<T>(out.ptr<T>(), x.ptr<T>(), g);
            });
        },
        py::arg("out"), py::arg("x"), py::arg("PH"), py::arg("PW"), py::arg("stride"), py::arg("pad"),
        "out (N,C,OH,OW) = mean over the in-bounds elements of each window of x (N,C,H,W)");

    m.def(
        "avgpool2d_backward",
        [](py::object dx_, py::object dout_, py::object PH, py::object PW, py::object stride, py::object pad) {
            Checker c{"avgpool2d_backward"};
            Arr dout = input(c, dout_, "dout", std::nullopt, nullptr);
            Arr dx = output(c, dx_, "dx", dout.dtype, "dout");
            c.ndim(dx.a, "dx", 4);
            const PoolGeometry g =
                pool_geometry(c, dx.dim(0), dx.dim(1), dx.dim(2), dx.dim(3), PH, PW, stride, pad, "dx");
            c.shape(dout.a, "dout", {g.N, g.C, g.OH, g.OW});
            c.outputs_distinct({{&dx.a, "dx"}}, {{&dout.a, "dout"}});
            dispatch(dout.dtype, [&](auto t) {
                using T = decltype(t);
                py::gil_scoped_release nogil;
                avgpool2d_backward<T>(dx.ptr<T>(), dout.ptr<T>(), g);
            });
        },
        py::arg("dx"), py::arg("dout"), py::arg("PH"), py::arg("PW"), py::arg("stride"), py::arg("pad"),
        "dx (N,C,H,W) overwritten: each dout entry shared equally by its window's in-bounds elements");
}

}  // namespace fl::bind
