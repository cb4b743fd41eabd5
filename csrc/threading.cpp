// The thread-pool decision.
//
// OpenBLAS keeps its own thread pool and OpenMP keeps another; both spin-wait after a job.
// On a 2-core machine a GEMM followed by an OpenMP element-wise kernel then spends most of
// its time with one pool's spinning threads starving the other's (measured: ~8.5 ms per
// GEMM+ReLU pair instead of ~0.3 ms). So the OpenMP pool owns the cores: OpenBLAS is told,
// through its threads-callback hook, to hand each parallel job list to us, and we run it as
// an OpenMP loop. Both kinds of kernel stay multi-threaded and only one set of threads
// exists. The hook is process-wide for this copy of libscipy_openblas (NumPy and SciPy
// bundle their own OpenBLAS builds and are unaffected).
//
// Without OpenMP our kernels are single-threaded and never spin, so OpenBLAS keeps its pool.
#include "threading.h"

#include "blas.h"
#include "common.h"

namespace fl::threads {

void init() {
#ifdef _OPENMP
    blas::run_jobs_on_openmp(true);
    // OpenBLAS splits work into as many jobs as it has threads: match the pool.
    blas::set_num_threads(omp_get_max_threads());
#endif
}

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("number of threads must be >= 1, got " + std::to_string(n));
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    blas::set_num_threads(n);
}

int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

std::string blas_threading() { return openmp_enabled() ? "openmp-callback" : "openblas"; }

}  // namespace fl::threads
