// The thread-pool decision.
//
// OpenBLAS keeps its own thread pool and OpenMP keeps another; both spin-wait after a job.
// On a 2-core machine a GEMM followed by an OpenMP element-wise kernel then spends most of
// its time with one pool's spinning threads starving the other's (measured: ~8.5 ms per
// GEMM+ReLU pair instead of ~0.3 ms). So the OpenMP pool owns the cores and OpenBLAS is
// kept single-threaded: fl::blas::gemm cuts each GEMM into tiles fixed by its shape and runs
// them on the OpenMP pool, one single-threaded OpenBLAS call per tile. Only one set of
// threads exists, and GEMM results no longer depend on the thread count (OpenBLAS's own
// threaded and unthreaded paths round differently). As a safety net OpenBLAS's threads
// callback also points at our pool, should anything raise its thread count. Both settings are
// process-wide for this copy of libscipy_openblas; NumPy and SciPy bundle their own OpenBLAS
// builds and are unaffected.
//
// Without OpenMP our kernels are single-threaded and never spin, so OpenBLAS keeps its pool.
#include "threading.h"

#include "blas.h"
#include "common.h"

namespace fl::threads {

void init() {
#ifdef _OPENMP
    blas::run_jobs_on_openmp(true);
    blas::set_num_threads(1);
#endif
}

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("number of threads must be >= 1, got " + std::to_string(n));
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    blas::set_num_threads(n);
#endif
}

int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return blas::num_threads();
#endif
}

bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

std::string blas_threading() { return openmp_enabled() ? "openmp-tiles" : "openblas"; }

}  // namespace fl::threads
