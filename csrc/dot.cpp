// Dot product of two flat arrays, accumulated in double.
#include "lbfgs.h"
#include "optim.h"

namespace fl {

// The blocks and lanes of sum_squares (optim.h), so the sum does not depend on the thread
// count.
template <class T>
double dot(const T* x, const T* y, i64 n) {
    // x, y (n)
    return optim_detail::blocked_sum(n, [=](i64 i) { return static_cast<double>(x[i]) * static_cast<double>(y[i]); });
}

template double dot<float>(const float*, const float*, i64);
template double dot<double>(const double*, const double*, i64);

}  // namespace fl
