// Weight penalties: sum of squares (L2) and sum of absolute values (L1), in double; and the
// sum of squared differences of two arrays (the size of an optimizer's update).
#include <cmath>

#include "optim.h"

namespace fl {

template <class T>
double sum_squares_diff(const T* a, const T* b, i64 n) {
    // a, b (n)
    return optim_detail::blocked_sum(n, [=](i64 i) {
        const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
        return d * d;
    });
}

template <class T>
double sum_squares(const T* x, i64 n) {
    // x (n)
    return optim_detail::blocked_sum(n, [=](i64 i) {
        const double v = static_cast<double>(x[i]);
        return v * v;
    });
}

template <class T>
double sum_abs(const T* x, i64 n) {
    // x (n)
    return optim_detail::blocked_sum(n, [=](i64 i) { return std::fabs(static_cast<double>(x[i])); });
}

template double sum_squares<float>(const float*, i64);
template double sum_squares<double>(const double*, i64);
template double sum_abs<float>(const float*, i64);
template double sum_abs<double>(const double*, i64);
template double sum_squares_diff<float>(const float*, const float*, i64);
template double sum_squares_diff<double>(const double*, const double*, i64);

}  // namespace fl
