#include "checks.h"
#include "kernels.h"

namespace fl::bind {

namespace {

// Targets are int64 labels (N,) in [0, K) or a (N,K) distribution of the logits' dtype.
struct Targets {
    py::array a;
    const std::int64_t* labels = nullptr;
    const void* dist = nullptr;
};

Targets check_targets(const Checker& c, py::handle t_, DType dtype, const char* scores, i64 N, i64 K) {
    Targets r{c.array(t_, "t")};
    if (r.a.ndim() != 1 && r.a.ndim() != 2)
        c.value_error("argument 't' must be 1-D labels (N,) or 2-D targets (N, K); got shape " + shape_str(r.a));
    if (r.a.ndim() == 1) {
        c.int64(r.a, "t");
        c.shape(r.a, "t", {N});
        r.labels = static_cast<const std::int64_t*>(r.a.data());
        for (i64 n = 0; n < N; ++n)
            if (r.labels[n] < 0 || r.labels[n] >= K)
                c.value_error("argument 't' holds label " + std::to_string(r.labels[n]) + " at index " +
                              std::to_string(n) + "; expected labels in [0, " + std::to_string(K) + ")");
    } else {
        c.same_dtype(r.a, "t", dtype, scores);
        c.shape(r.a, "t", {N, K});
        r.dist = r.a.data();
    }
    return r;
}

}  // namespace

void bind_softmax_cross_entropy(py::module_& m) {
    m.def(
        "softmax_cross_entropy_forward",
        [](py::object probs_, py::object logits_, py::object t_) {
            Checker c{"softmax_cross_entropy_forward"};
            Arr logits = input(c, logits_, "logits", std::nullopt, nullptr);
            Arr probs = output(c, probs_, "probs", logits.dtype, "logits");
            c.ndim(logits.a, "logits", 2);
            const i64 N = logits.dim(0), K = logits.dim(1);
            if (K < 1) c.value_error("argument 'logits' must have at least one class; got shape " + shape_str(logits.a));
            c.same_shape(probs.a, "probs", logits.a, "logits");
            Targets t = check_targets(c, t_, logits.dtype, "logits", N, K);
            c.outputs_distinct({{&probs.a, "probs"}}, {{&logits.a, "logits"}, {&t.a, "t"}});
            return dispatch(logits.dtype, [&](auto tag) {
                using T = decltype(tag);
                py::gil_scoped_release nogil;
                return softmax_cross_entropy_forward<T>(probs.ptr<T>(), logits.ptr<T>(), t.labels,
                                                        static_cast<const T*>(t.dist), N, K);
            });
        },
        py::arg("probs"), py::arg("logits"), py::arg("t"),
        "probs (N,K) = softmax(logits); returns the mean cross-entropy against t");

    m.def(
        "softmax_cross_entropy_backward",
        [](py::object dlogits_, py::object probs_, py::object t_, py::object dloss_) {
            Checker c{"softmax_cross_entropy_backward"};
            Arr probs = input(c, probs_, "probs", std::nullopt, nullptr);
            Arr dlogits = output(c, dlogits_, "dlogits", probs.dtype, "probs");
            c.ndim(probs.a, "probs", 2);
            const i64 N = probs.dim(0), K = probs.dim(1);
            c.same_shape(dlogits.a, "dlogits", probs.a, "probs");
            Targets t = check_targets(c, t_, probs.dtype, "probs", N, K);
            c.outputs_distinct({{&dlogits.a, "dlogits"}}, {{&probs.a, "probs"}, {&t.a, "t"}});
            const double dloss = c.real(dloss_, "dloss");
            dispatch(probs.dtype, [&](auto tag) {
                using T = decltype(tag);
                py::gil_scoped_release nogil;
                softmax_cross_entropy_backward<T>(dlogits.ptr<T>(), probs.ptr<T>(), t.labels,
                                                  static_cast<const T*>(t.dist), dloss, N, K);
            });
        },
        py::arg("dlogits"), py::arg("probs"), py::arg("t"), py::arg("dloss") = py::float_(1.0),
        "dlogits = dloss * (probs - onehot(t)) / N");
}

}  // namespace fl::bind
