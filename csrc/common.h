// Shared by every kernel file: sizes, the OpenMP shim and exception-safe parallel loops.
//
// Kernels here are plain C++ over raw pointers: no Python, no allocation of outputs, no
// argument validation (the bindings in bindings/ do that once, where Python meets C++).
#pragma once
#include <cstdint>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fl {

using i64 = std::int64_t;

// a * b for sizes that will size an allocation or index a buffer: refuses negative operands
// and any product that does not fit int64, before anything is allocated.
inline i64 checked_mul(i64 a, i64 b) {
    i64 r;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
        throw std::overflow_error("size " + std::to_string(a) + " x " + std::to_string(b) + " overflows int64");
    return r;
}

// Runs body(i) for i in [0, n) on the OpenMP pool. An exception thrown by any iteration
// must not escape an OpenMP region (that terminates the process), so the first one is
// captured, the remaining iterations are skipped, and it is rethrown on the caller's thread.
template <class Body>
void parallel_for(i64 n, Body body, i64 min_per_thread = 1) {
#ifdef _OPENMP
    std::exception_ptr error;
    std::once_flag once;
    bool failed = false;
    const bool go_parallel = n >= 2 * min_per_thread && !omp_in_parallel();
#pragma omp parallel for schedule(static) if (go_parallel)
    for (i64 i = 0; i < n; ++i) {
        bool stop;
#pragma omp atomic read
        stop = failed;
        if (stop) continue;
        try {
            body(i);
        } catch (...) {
            std::call_once(once, [&] { error = std::current_exception(); });
#pragma omp atomic write
            failed = true;
        }
    }
    if (error) std::rethrow_exception(error);
#else
    (void)min_per_thread;
    for (i64 i = 0; i < n; ++i) body(i);
#endif
}

// Splits [0, n) into one contiguous chunk per thread: chunk(begin, end). Chunk boundaries
// depend only on n and the thread count, never on timing.
template <class Chunk>
void parallel_chunks(i64 n, Chunk chunk, i64 min_per_thread = 4096) {
#ifdef _OPENMP
    int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    i64 max_useful = n / (min_per_thread > 0 ? min_per_thread : 1);
    if (max_useful < threads) threads = static_cast<int>(max_useful < 1 ? 1 : max_useful);
    if (threads <= 1) {
        chunk(i64{0}, n);
        return;
    }
    parallel_for(threads, [&](i64 t) {
        const i64 begin = n * t / threads, end = n * (t + 1) / threads;
        chunk(begin, end);
    });
#else
    (void)min_per_thread;
    chunk(i64{0}, n);
#endif
}

}  // namespace fl
