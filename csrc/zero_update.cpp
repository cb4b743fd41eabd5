// Zeroing the gradients before a step: one call per flat gradient buffer.
#include "optim.h"

#include <cstring>

namespace fl {

// x (n) = +0. All-zero bits are +0.0 in IEEE float and double. On the OpenMP pool rather
// than NumPy's single-threaded fill: simple_cnn's 1.7 MB took 0.065 ms of a training step
// that way, 0.016 ms this way.
template <class T>
void zero_update(T* x, i64 n) {
    parallel_chunks(n, [&](i64 i0, i64 i1) {
        std::memset(x + i0, 0, static_cast<size_t>(i1 - i0) * sizeof(T));
    }, optim_detail::kMinPerThread);
}

template void zero_update<float>(float*, i64);
template void zero_update<double>(double*, i64);

}  // namespace fl
