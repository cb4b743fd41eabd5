// Argument checking where Python meets C++. Bindings take every array as a py::object so
// pybind11 never converts (a converted output would be a silent copy that the caller never
// sees); each array is then checked for type, dtype, byte order, layout, alignment, shape
// and, for outputs, writeability. Messages name the kernel, the argument, the expectation
// and what was given, matching fastlayers.reference._checks.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pool.h"

namespace fl::bind {

namespace py = pybind11;
using i64 = std::int64_t;

enum class DType { f32, f64 };

// Shape pattern entry: a fixed size, or -1 for "any" (its value is then read off the array).
using Shape = std::vector<i64>;

std::string shape_str(const py::array& a);
std::string shape_str(const Shape& s);
std::string dtype_str(const py::array& a);
// Python's repr of a float ("nan", "-1.0", "inf"), so messages read like the oracle's.
std::string real_repr(double v);

struct Checker {
    const char* kernel;

    // The array itself: a numpy.ndarray, C-contiguous, aligned, native byte order.
    py::array array(py::handle obj, const char* name) const;
    // A float array (float32/float64). Returns its dtype.
    DType floating(const py::array& a, const char* name) const;
    void same_dtype(const py::array& a, const char* name, DType want, const char* like) const;
    void int64(const py::array& a, const char* name) const;
    void int32(const py::array& a, const char* name) const;
    void uint8(const py::array& a, const char* name) const;
    void writeable(const py::array& a, const char* name) const;
    void ndim(const py::array& a, const char* name, py::ssize_t want) const;
    void ndim_at_least(const py::array& a, const char* name, py::ssize_t want) const;
    // Shape equal to `want` (entries -1 match anything).
    void shape(const py::array& a, const char* name, const Shape& want) const;
    void same_shape(const py::array& a, const char* name, const py::array& ref, const char* ref_name) const;
    // No two of the named arrays share a byte of memory. Kernels read inputs while writing
    // outputs, so an output that aliases an input (or another output) would give an answer
    // that depends on loop order and thread count; every kernel refuses it unless its
    // contract says it works in place (the *_update kernels). A null pointer (an optional
    // output given as None) is skipped.
    void distinct(std::initializer_list<std::pair<const py::array*, const char*>> arrays) const;
    // The project's rule: every output overlaps neither another output nor any input; inputs
    // may share memory with each other (reading one array twice is harmless, and the
    // BatchNorm layer passes one zero vector as both beta and running_mean).
    void outputs_distinct(std::initializer_list<std::pair<const py::array*, const char*>> outputs,
                          std::initializer_list<std::pair<const py::array*, const char*>> inputs) const;

    // Hyper-parameters, checked like fastlayers.reference._checks: a non-int (bool included)
    // or non-real is a TypeError, an out-of-range value a ValueError.
    i64 positive_int(py::handle v, const char* name) const;
    i64 nonnegative_int(py::handle v, const char* name) const;
    double real(py::handle v, const char* name) const;
    // A real that is neither infinite nor NaN.
    double finite(py::handle v, const char* name) const;

    // A scratch buffer of the product of `factors` elements of `elem_bytes` each, checked before
    // the kernel allocates it: OverflowError when its size does not fit 64 bits, MemoryError
    // when it exceeds the machine's physical memory (an allocation the operating system might
    // grant lazily and then kill the process for touching). `what` names the buffer.
    void scratch_fits(std::initializer_list<i64> factors, i64 elem_bytes, const std::string& what) const;

    [[noreturn]] void value_error(const std::string& msg) const;
    [[noreturn]] void overlap_error(const char* a, const char* b) const;
    [[noreturn]] void type_error(const std::string& msg) const;
};

// Convenience: a checked float array that must match dtype `want` and be writeable if `out`.
struct Arr {
    py::array a;
    DType dtype;
    template <class T>
    T* ptr() const { return static_cast<T*>(const_cast<void*>(a.data())); }
    i64 dim(py::ssize_t i) const { return static_cast<i64>(a.shape(i)); }
    i64 size() const { return static_cast<i64>(a.size()); }
};

Arr input(const Checker& c, py::handle obj, const char* name, std::optional<DType> want, const char* like);
Arr output(const Checker& c, py::handle obj, const char* name, std::optional<DType> want, const char* like);
// Two float inputs of one dtype and shape (any ndim), read as flat vectors: b is checked
// against a (dtype, then shape).
std::pair<Arr, Arr> input_pair(const Checker& c, py::handle a, const char* a_name, py::handle b, const char* b_name);
// An optional gradient output: None gives std::nullopt.
std::optional<Arr> optional_output(const Checker& c, py::handle obj, const char* name, DType want, const char* like);

// A pooling window over an H x W plane, validated as the oracle's _geometry and _pool_pad do
// (defined in bind_pool.cpp; the fused convolution + pooling kernel uses it too, with x_name
// null: the plane is then the convolution output of x).
PoolGeometry pool_geometry(const Checker& c, i64 N, i64 C, i64 H, i64 W, py::handle PH, py::handle PW,
                           py::handle stride, py::handle pad, const char* x_name, const char* stride_name = "stride",
                           const char* pad_name = "pad");
// obj as an int64 array (an index input), refused with a TypeError otherwise.
py::array int64_array(const Checker& c, py::handle obj, const char* name);
// obj as an int32 array (an argmax), refused with a TypeError otherwise.
py::array int32_array(const Checker& c, py::handle obj, const char* name);
// H * W, saturated at the int64 maximum instead of overflowing.
i64 plane_pixels(i64 H, i64 W);
// Refuses to write an argmax whose indices run to count - 1 (a plane of count pixels, count
// maxout pieces) when that does not fit int32: `what` names the count.
void argmax_fits_int32(const Checker& c, i64 count, const std::string& what);
// Refuses an argmax (of max pooling) holding an index outside [0, plane): the backward
// kernels index with it unchecked.
void argmax_in_range(const Checker& c, const py::array& argmax, i64 plane);

template <class Fn>
decltype(auto) dispatch(DType t, Fn&& fn) {
    if (t == DType::f32) return fn(float{});
    return fn(double{});
}

}  // namespace fl::bind
