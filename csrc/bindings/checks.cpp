#include "checks.h"

#include <cmath>
#include <iterator>
#include <sstream>

namespace fl::bind {

namespace {
// numpy's flag bits (numpy/ndarraytypes.h), stable across NumPy 1.x and 2.x.
constexpr int kCContiguous = 0x0001;
constexpr int kAligned = 0x0100;
}  // namespace

std::string shape_str(const py::array& a) {
    Shape s(a.shape(), a.shape() + a.ndim());
    return shape_str(s);
}

std::string shape_str(const Shape& s) {
    std::ostringstream o;
    o << "(";
    for (size_t i = 0; i < s.size(); ++i) {
        if (i) o << ", ";
        if (s[i] < 0) o << "*"; else o << s[i];
    }
    if (s.size() == 1) o << ",";
    o << ")";
    return o.str();
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

void Checker::value_error(const std::string& msg) const {
    throw py::value_error(std::string(kernel) + ": " + msg);
}
void Checker::type_error(const std::string& msg) const {
    throw py::type_error(std::string(kernel) + ": " + msg);
}

py::array Checker::array(py::handle obj, const char* name) const {
    if (!py::isinstance<py::array>(obj)) {
        type_error(std::string("argument '") + name + "' must be a numpy.ndarray, got " +
                   py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>());
    }
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!(a.flags() & kCContiguous))
        value_error(std::string("argument '") + name + "' must be C-contiguous; got a strided view of shape " +
                    shape_str(a) + " (pass numpy.ascontiguousarray(...) explicitly)");
    if (!(a.flags() & kAligned))
        value_error(std::string("argument '") + name + "' must be aligned to its dtype; got a misaligned buffer");
    return a;
}

DType Checker::floating(const py::array& a, const char* name) const {
    if (a.dtype().equal(py::dtype::of<float>())) return DType::f32;
    if (a.dtype().equal(py::dtype::of<double>())) return DType::f64;
    type_error(std::string("argument '") + name + "' must have dtype float32 or float64 (native byte order); got " +
               dtype_str(a));
}

void Checker::same_dtype(const py::array& a, const char* name, DType want, const char* like) const {
    const bool ok = want == DType::f32 ? a.dtype().equal(py::dtype::of<float>())
                                       : a.dtype().equal(py::dtype::of<double>());
    if (!ok)
        type_error(std::string("argument '") + name + "' must have dtype " + (want == DType::f32 ? "float32" : "float64") +
                   " like '" + like + "'; got " + dtype_str(a));
}

// An index or mask array: exactly dtype I, in native byte order, never converted.
template <class I>
void exact_dtype(const Checker& c, const py::array& a, const char* name) {
    const py::dtype want = py::dtype::of<I>();
    if (!a.dtype().equal(want))
        c.type_error(std::string("argument '") + name + "' must have dtype " + py::str(want).cast<std::string>() +
                     "; got " + dtype_str(a));
}

void Checker::int32(const py::array& a, const char* name) const { exact_dtype<std::int32_t>(*this, a, name); }
void Checker::int64(const py::array& a, const char* name) const { exact_dtype<std::int64_t>(*this, a, name); }
void Checker::uint8(const py::array& a, const char* name) const { exact_dtype<std::uint8_t>(*this, a, name); }

void Checker::writeable(const py::array& a, const char* name) const {
    if (!a.writeable()) value_error(std::string("output '") + name + "' is read-only; expected a writeable array");
}

void Checker::ndim(const py::array& a, const char* name, py::ssize_t want) const {
    if (a.ndim() != want)
        value_error(std::string("argument '") + name + "' must be " + std::to_string(want) + "-D; got shape " + shape_str(a));
}

void Checker::ndim_at_least(const py::array& a, const char* name, py::ssize_t want) const {
    if (a.ndim() < want)
        value_error(std::string("argument '") + name + "' must have at least " + std::to_string(want) +
                    " dimensions; got shape " + shape_str(a));
}

void Checker::shape(const py::array& a, const char* name, const Shape& want) const {
    bool ok = a.ndim() == static_cast<py::ssize_t>(want.size());
    for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || a.shape(i) == want[i];
    if (!ok)
        value_error(std::string("argument '") + name + "' has shape " + shape_str(a) + "; expected " + shape_str(want));
}

void Checker::same_shape(const py::array& a, const char* name, const py::array& ref, const char* ref_name) const {
    bool ok = a.ndim() == ref.ndim();
    for (py::ssize_t i = 0; ok && i < a.ndim(); ++i) ok = a.shape(i) == ref.shape(i);
    if (!ok)
        value_error(std::string("argument '") + name + "' has shape " + shape_str(a) + "; expected " + shape_str(ref) +
                    " (the shape of '" + ref_name + "')");
}

namespace {
// The bytes of a C-contiguous array (every array reaching a kernel is one): one interval, or
// none for an empty array or an optional output given as None.
struct Span {
    const char *begin = nullptr, *end = nullptr;
    const char* name;
};
Span span(const std::pair<const py::array*, const char*>& p) {
    Span s{nullptr, nullptr, p.second};
    if (p.first && p.first->size() > 0) {
        s.begin = static_cast<const char*>(p.first->data());
        s.end = s.begin + p.first->nbytes();
    }
    return s;
}
bool overlap(const Span& a, const Span& b) { return a.begin && b.begin && a.begin < b.end && b.begin < a.end; }
}  // namespace

void Checker::distinct(std::initializer_list<std::pair<const py::array*, const char*>> arrays) const {
    std::vector<Span> s;
    s.reserve(arrays.size());
    for (const auto& p : arrays) s.push_back(span(p));
    for (size_t i = 0; i < s.size(); ++i)
        for (size_t j = i + 1; j < s.size(); ++j)
            if (overlap(s[i], s[j])) overlap_error(s[i].name, s[j].name);
}

void Checker::outputs_distinct(std::initializer_list<std::pair<const py::array*, const char*>> outputs,
                               std::initializer_list<std::pair<const py::array*, const char*>> inputs) const {
    // Each array's interval once, then every pair that involves an output.
    std::vector<Span> out, in;
    out.reserve(outputs.size());
    in.reserve(inputs.size());
    for (const auto& p : outputs) out.push_back(span(p));
    for (const auto& p : inputs) in.push_back(span(p));
    for (size_t o = 0; o < out.size(); ++o) {
        for (size_t p = o + 1; p < out.size(); ++p)
            if (overlap(out[o], out[p])) overlap_error(out[o].name, out[p].name);
        for (const Span& i : in)
            if (overlap(out[o], i)) overlap_error(out[o].name, i.name);
    }
}

void Checker::overlap_error(const char* a, const char* b) const {
    value_error(std::string("arguments '") + a + "' and '" + b +
                "' overlap in memory; expected distinct arrays (outputs must not alias inputs)");
}

namespace {
std::string type_name(py::handle v) {
    return py::str(py::type::handle_of(v).attr("__name__")).cast<std::string>();
}
// numpy's abstract scalar types, looked up once. Released on purpose: a static py::object
// would be destroyed after the interpreter has finalised.
py::handle numpy_type(const char* name) {
    return py::object(py::module_::import("numpy").attr(name)).release();
}
bool is_int(py::handle v) {
    static const py::handle integer = numpy_type("integer");
    return !py::isinstance<py::bool_>(v) && (py::isinstance<py::int_>(v) || py::isinstance(v, integer));
}
bool is_real(py::handle v) {
    static const py::handle floating = numpy_type("floating");
    return is_int(v) || py::isinstance<py::float_>(v) || py::isinstance(v, floating);
}
// An int hyper-parameter as int64; one too large for that is out of range, like any other
// value the kernel cannot use.
i64 as_i64(const Checker& c, py::handle v, const char* name) {
    int overflow = 0;
    py::object as_int = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
    if (!as_int) throw py::error_already_set();
    const long long r = PyLong_AsLongLongAndOverflow(as_int.ptr(), &overflow);
    if (overflow)
        c.value_error(std::string("argument '") + name + "' is out of range; got " + py::str(v).cast<std::string>());
    return static_cast<i64>(r);
}
}  // namespace

i64 Checker::positive_int(py::handle v, const char* name) const {
    if (!is_int(v)) type_error(std::string("argument '") + name + "' must be an int; got " + type_name(v));
    const i64 r = as_i64(*this, v, name);
    if (r < 1) value_error(std::string("argument '") + name + "' must be >= 1; got " + std::to_string(r));
    return r;
}

i64 Checker::nonnegative_int(py::handle v, const char* name) const {
    if (!is_int(v)) type_error(std::string("argument '") + name + "' must be an int; got " + type_name(v));
    const i64 r = as_i64(*this, v, name);
    if (r < 0) value_error(std::string("argument '") + name + "' must be >= 0; got " + std::to_string(r));
    return r;
}

double Checker::real(py::handle v, const char* name) const {
    if (!is_real(v)) type_error(std::string("argument '") + name + "' must be a real number; got " + type_name(v));
    const double r = PyFloat_AsDouble(v.ptr());
    if (r == -1.0 && PyErr_Occurred()) {
        // An int beyond the range of a double: out of range like any value the kernel cannot use.
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) throw py::error_already_set();
        PyErr_Clear();
        value_error(std::string("argument '") + name + "' is out of range; got an int of " +
                    py::str(v.attr("bit_length")()).cast<std::string>() + " bits");
    }
    return r;
}

double Checker::finite(py::handle v, const char* name) const {
    const double r = real(v, name);
    if (!std::isfinite(r)) value_error(std::string("argument '") + name + "' must be a finite number; got " + real_repr(r));
    return r;
}

std::string real_repr(double v) { return py::repr(py::float_(v)).cast<std::string>(); }

void Checker::scratch_fits(std::initializer_list<i64> factors, i64 elem_bytes, const std::string& what) const {
    std::string expr;
    i64 bytes = elem_bytes;
    bool overflow = false;
    for (i64 f : factors) {
        expr += (expr.empty() ? "" : " * ") + std::to_string(f);
        overflow = overflow || __builtin_mul_overflow(bytes, f, &bytes);
    }
    if (overflow) {
        const std::string msg = std::string(kernel) + ": " + what + " of " + expr + " elements of " +
                                std::to_string(elem_bytes) + " bytes does not fit a 64-bit size";
        PyErr_SetString(PyExc_OverflowError, msg.c_str());
        throw py::error_already_set();
    }
    const i64 limit = physical_memory_bytes();
    if (limit > 0 && bytes > limit) {
        const std::string msg = std::string(kernel) + ": " + what + " of " + expr + " elements needs " +
                                std::to_string(bytes) + " bytes; more than this machine's memory (" +
                                std::to_string(limit) + " bytes)";
        PyErr_SetString(PyExc_MemoryError, msg.c_str());
        throw py::error_already_set();
    }
}

Arr input(const Checker& c, py::handle obj, const char* name, std::optional<DType> want, const char* like) {
    py::array a = c.array(obj, name);
    DType t = want ? *want : c.floating(a, name);
    if (want) c.same_dtype(a, name, *want, like);
    return {a, t};
}

std::pair<Arr, Arr> input_pair(const Checker& c, py::handle a_, const char* a_name, py::handle b_, const char* b_name) {
    Arr a = input(c, a_, a_name, std::nullopt, nullptr);
    Arr b = input(c, b_, b_name, a.dtype, a_name);
    c.same_shape(b.a, b_name, a.a, a_name);
    return {a, b};
}

Arr output(const Checker& c, py::handle obj, const char* name, std::optional<DType> want, const char* like) {
    Arr r = input(c, obj, name, want, like);
    c.writeable(r.a, name);
    return r;
}

std::optional<Arr> optional_output(const Checker& c, py::handle obj, const char* name, DType want, const char* like) {
    if (obj.is_none()) return std::nullopt;
    return output(c, obj, name, want, like);
}

}  // namespace fl::bind
