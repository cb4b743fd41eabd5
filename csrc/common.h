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
#include <vector>

#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fl {

using i64 = std::int64_t;

// a * b for sizes that will size an allocation or index a buffer: refuses negative operands
// and any product that does not fit int64, before anything is allocated.
inline i64 checked_mul(i64 a, i64 b, const char* what = "size") {
    i64 r;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
        throw std::overflow_error(std::string(what) + " = " + std::to_string(a) + " * " + std::to_string(b) +
                                  " does not fit a 64-bit integer");
    return r;
}

// This thread's buffer of at least n elements for the user Owner (a tag type) and its slot,
// kept across calls: a training step then neither faults in nor zeroes megabytes per layer.
// The pointer stays valid until the same thread asks the same (T, Owner, Slot) for more.
template <class T, class Owner, int Slot = 0>
T* kept_buffer(i64 n) {
    static thread_local std::vector<T> kept;
    if (kept.size() < static_cast<size_t>(n)) kept.resize(static_cast<size_t>(n));
    return kept.data();
}

// p rounded up to a 64-byte boundary (a cache line, a 16-float vector). A buffer of n
// elements that starts there needs n + kAlignSlack<T> elements from p.
template <class T>
constexpr i64 kAlignSlack = 64 / static_cast<i64>(sizeof(T)) - 1;
template <class T>
T* align64(T* p) {
    return reinterpret_cast<T*>((reinterpret_cast<std::uintptr_t>(p) + 63) & ~std::uintptr_t{63});
}

// kept_buffer's n elements, on a 64-byte boundary.
template <class T, class Owner, int Slot = 0>
T* kept_buffer_aligned(i64 n) {
    return align64(kept_buffer<T, Owner, Slot>(n + kAlignSlack<T>));
}

// This machine's physical memory in bytes (0 when the system does not say). Scratch larger
// than this is refused before it is allocated.
inline i64 physical_memory_bytes() {
    static const i64 bytes = [] {
        const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
        i64 r;
        return pages > 0 && page > 0 && !__builtin_mul_overflow(i64{pages}, i64{page}, &r) ? r : i64{0};
    }();
    return bytes;
}

// True on a thread that is running the body of a parallel_for / parallel_chunks, whether or
// not that loop actually went parallel. Kernels that adapt to being nested (the GEMM tiling
// in blas.cpp) ask this rather than omp_in_parallel(), which is false inside a team of one
// thread: that would make their choice depend on the thread count.
inline bool& in_parallel_flag() {
    static thread_local bool flag = false;
    return flag;
}
inline bool in_parallel() { return in_parallel_flag(); }

struct ParallelScope {
    bool previous;
    ParallelScope() : previous(in_parallel_flag()) { in_parallel_flag() = true; }
    ~ParallelScope() { in_parallel_flag() = previous; }
    ParallelScope(const ParallelScope&) = delete;
    ParallelScope& operator=(const ParallelScope&) = delete;
};

// Runs body(i) for i in [0, n) on the OpenMP pool. An exception thrown by any iteration
// must not escape an OpenMP region (that terminates the process), so the first one is
// captured, the remaining iterations are skipped, and it is rethrown on the caller's thread.
template <class Body>
void parallel_for(i64 n, Body body, i64 min_per_thread = 1) {
#ifdef _OPENMP
    std::exception_ptr error;
    std::once_flag once;
    bool failed = false;
    const bool go_parallel = n >= 2 * min_per_thread && !in_parallel() && !omp_in_parallel();
#pragma omp parallel for schedule(static) if (go_parallel)
    for (i64 i = 0; i < n; ++i) {
        bool stop;
#pragma omp atomic read
        stop = failed;
        if (stop) continue;
        try {
            ParallelScope scope;
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
    ParallelScope scope;
    for (i64 i = 0; i < n; ++i) body(i);
#endif
}

// Splits [0, n) into one contiguous chunk per thread: chunk(begin, end). Chunk boundaries
// depend only on n and the thread count, never on timing.
template <class Chunk>
void parallel_chunks(i64 n, Chunk chunk, i64 min_per_thread = 4096) {
#ifdef _OPENMP
    int threads = in_parallel() || omp_in_parallel() ? 1 : omp_get_max_threads();
    i64 max_useful = n / (min_per_thread > 0 ? min_per_thread : 1);
    if (max_useful < threads) threads = static_cast<int>(max_useful < 1 ? 1 : max_useful);
    if (threads <= 1) {
        ParallelScope scope;
        chunk(i64{0}, n);
        return;
    }
    parallel_for(threads, [&](i64 t) {
        const i64 begin = n * t / threads, end = n * (t + 1) / threads;
        chunk(begin, end);
    });
#else
    (void)min_per_thread;
    ParallelScope scope;
    chunk(i64{0}, n);
#endif
}

}  // namespace fl
