// The extension module: build facts, thread control and every native kernel.
#include <pybind11/stl.h>

#include <array>
#include <optional>
#include <string>

#include "blas.h"
#include "checks.h"
#include "memory.h"
#include "peak_fma.h"
#include "threading.h"
#include "conv_direct.h"
#include "conv_pooled.h"
#include "winograd.h"

namespace fl::bind {
void bind_affine(py::module_& m);
void bind_softmax_cross_entropy(py::module_& m);
void bind_conv(py::module_& m);
void bind_pool(py::module_& m);
void bind_norm(py::module_& m);
void bind_activations(py::module_& m);
void bind_mse(py::module_& m);
void bind_optim(py::module_& m);
void bind_warp(py::module_& m);
void bind_lbfgs(py::module_& m);
}  // namespace fl::bind

namespace {

std::string compiler() {
#if defined(__clang__)
    return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    return std::string("gcc ") + __VERSION__;
#else
    return "unknown";
#endif
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    namespace py = pybind11;
    m.doc() = "fastlayers native kernels (C++, OpenBLAS, OpenMP)";
    fl::threads::init();

    m.def("build_facts", [] {
        py::dict d;
        d["version"] = FASTLAYERS_VERSION;
        d["compiler"] = compiler();
        d["openmp"] = fl::threads::openmp_enabled();
        d["threads"] = fl::threads::num_threads();
        d["blas"] = fl::blas::name();
        d["blas_config"] = fl::blas::config();
        d["blas_core"] = fl::blas::corename();
        d["blas_threads"] = fl::blas::num_threads();
        d["blas_threading"] = fl::threads::blas_threading();
        d["gemm_small_tiles"] = fl::blas::small_tiles();
        d["heap"] = fl::memory::heap_policy();
#ifdef FASTLAYERS_SANITIZED
        d["sanitize"] = true;
#else
        d["sanitize"] = false;
#endif
        return d;
    });
    m.def("retain_heap", &fl::memory::retain_heap);
    m.def("set_num_threads", &fl::threads::set_num_threads, py::arg("n"));
    m.def("get_num_threads", &fl::threads::num_threads);
    m.def("set_conv_algorithm", &fl::set_conv_algorithm, py::arg("algorithm"));
    m.def("get_conv_algorithm", &fl::conv_algorithm);
    // Private, for fastlayers.profile and the tests: which algorithms a float32 convolution's
    // forward ("direct", "winograd" or "im2col") and backward (those, or "pooled") run, the
    // bytes the paths other than im2col ask for (conv_direct.h, winograd.h, conv_pooled.h),
    // and whether the direct forward pools in its registers. fused: 0 the convolution alone,
    // 1 with ReLU, 2 with ReLU and max pooling into planes of pooled_plane pixels, whose
    // window, stride and padding are pool (PH, PW, stride, pad) where known.
    m.def("_conv_plan", [](fl::i64 N, fl::i64 C, fl::i64 H, fl::i64 W, fl::i64 FN, fl::i64 FH, fl::i64 FW,
                            fl::i64 stride, fl::i64 pad, int fused, fl::i64 pooled_plane, bool dx,
                            fl::i64 threads, std::optional<std::array<fl::i64, 4>> pool) -> py::tuple {
        if (N < 0 || C < 0 || FN < 0 || FH < 1 || FW < 1 || stride < 1 || pad < 0 || H + 2 * pad < FH ||
            W + 2 * pad < FW || pooled_plane < 0)
            throw std::invalid_argument("_conv_plan: not a valid convolution geometry");
        const fl::ConvGeometry g{N, C, H, W, FN, FH, FW, stride, pad, (H + 2 * pad - FH) / stride + 1,
                                 (W + 2 * pad - FW) / stride + 1};
        std::optional<fl::PoolGeometry> pg;
        if (fused >= 2 && pool) {
            const auto [PH, PW, ps, pp] = *pool;
            if (PH < 1 || PW < 1 || ps < 1 || pp < 0 || g.OH + 2 * pp < PH || g.OW + 2 * pp < PW)
                throw std::invalid_argument("_conv_plan: not a valid pooling geometry");
            pg = fl::PoolGeometry{N, FN, g.OH, g.OW, PH, PW, ps, pp, (g.OH + 2 * pp - PH) / ps + 1,
                                  (g.OW + 2 * pp - PW) / ps + 1};
        }
        const bool registers = pg && fl::direct_pools_in_registers(g, *pg);
        // The order conv2d.cpp tries them in.
        const bool winograd = fl::winograd_applies(g);
        const char* forward = fl::direct_applies(g) ? "direct" : winograd ? "winograd" : "im2col";
        const char* backward = fused >= 2 && !dx && fl::direct_pooled_applies(g)      ? "direct"
                               : fused >= 2 && fl::pooled_backward_applies(g, pooled_plane) ? "pooled"
                               : winograd                                                  ? "winograd"
                                                                                           : "im2col";
        const std::string fw = forward, bw = backward;
        fl::i64 bytes = 0;
        if (fw == "direct") bytes += fl::direct_scratch_bytes(g, fused, pooled_plane, threads, dx, registers);
        if (fw == "winograd" || bw == "winograd")
            bytes += fl::winograd_scratch_bytes(g, dx, fused, threads, bw == "winograd", pg ? &*pg : nullptr);
        if (bw == "pooled") bytes += fl::pooled_backward_scratch_bytes(g, pooled_plane, dx, threads);
        return py::make_tuple(forward, backward, bytes, registers);
    }, py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("FN"), py::arg("FH"), py::arg("FW"),
       py::arg("stride"), py::arg("pad"), py::arg("fused"), py::arg("pooled_plane"), py::arg("dx"),
       py::arg("threads"), py::arg("pool") = py::none());
    // Private: lets the thread-pool test show that its probe detects the fight it guards.
    m.def("_blas_separate_pools", &fl::blas::use_separate_pools, py::arg("on"), py::arg("threads"));
    // Private, for the tests: how a GEMM of this shape is cut (blas.h), and forcing the cuts
    // for OpenBLAS's small-matrix kernels on (1) or off (0) whatever the core (-1: follow it).
    m.def("_gemm_plan", [](fl::i64 M, fl::i64 N, fl::i64 K, bool trans_a, bool trans_b, bool single) {
        if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("_gemm_plan: sizes must be >= 0");
        const fl::blas::Plan p = fl::blas::plan(trans_a, trans_b, M, N, K, single);
        return py::make_tuple(std::string(1, p.cut), p.tiles, p.groups);
    }, py::arg("M"), py::arg("N"), py::arg("K"), py::arg("trans_a"), py::arg("trans_b"), py::arg("single"));
    m.def("_set_gemm_small_tiles", &fl::blas::set_small_tiles, py::arg("mode"));
    // Private, for bench/kernels.py: the cores' float32 FMA peak in GFLOP/s (0 without AVX-512).
    m.def("_peak_fma_gflops", [](fl::i64 iterations, int repeats) {
        if (iterations < 1 || repeats < 1) throw std::invalid_argument("_peak_fma_gflops: iterations and repeats must be >= 1");
        py::gil_scoped_release nogil;
        return fl::peak_fma_gflops(iterations, repeats);
    }, py::arg("iterations"), py::arg("repeats"));

    fl::bind::bind_affine(m);
    fl::bind::bind_softmax_cross_entropy(m);
    fl::bind::bind_conv(m);
    fl::bind::bind_pool(m);
    fl::bind::bind_norm(m);
    fl::bind::bind_activations(m);
    fl::bind::bind_mse(m);
    fl::bind::bind_optim(m);
    fl::bind::bind_warp(m);
    fl::bind::bind_lbfgs(m);
}
