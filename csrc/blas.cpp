#include "blas.h"

#include <cblas.h>

#include <limits>

namespace fl::blas {
namespace {

blasint to_blasint(i64 v, const char* what) {
    if (v < 0 || v > std::numeric_limits<blasint>::max())
        throw std::overflow_error(std::string("GEMM dimension ") + what + " = " + std::to_string(v) +
                                  " does not fit OpenBLAS's 32-bit integer");
    return static_cast<blasint>(v);
}

// OpenBLAS jobs executed as one OpenMP worksharing loop on our pool: the pool that already
// owns the cores runs them, so no second set of spinning threads exists (see threading.cpp).
void openmp_threads_callback(int /*sync*/, openblas_dojob_callback dojob, int numjobs,
                             size_t jobdata_elsize, void* jobdata, int dojob_data) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (!omp_in_parallel())
#endif
    for (int i = 0; i < numjobs; ++i) {
        void* element = static_cast<char*>(jobdata) + static_cast<size_t>(i) * jobdata_elsize;
        dojob(i, element, dojob_data);
    }
}

}  // namespace

void gemm(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
          const float* B, i64 ldb, float beta, float* C, i64 ldc) {
    if (M == 0 || N == 0) return;
    scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                      to_blasint(M, "M"), to_blasint(N, "N"), to_blasint(K, "K"), alpha, A,
                      to_blasint(lda, "lda"), B, to_blasint(ldb, "ldb"), beta, C, to_blasint(ldc, "ldc"));
}

void gemm(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, double alpha, const double* A, i64 lda,
          const double* B, i64 ldb, double beta, double* C, i64 ldc) {
    if (M == 0 || N == 0) return;
    scipy_cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                      to_blasint(M, "M"), to_blasint(N, "N"), to_blasint(K, "K"), alpha, A,
                      to_blasint(lda, "lda"), B, to_blasint(ldb, "ldb"), beta, C, to_blasint(ldc, "ldc"));
}

std::string name() { return "OpenBLAS"; }
std::string config() { return scipy_openblas_get_config(); }
std::string corename() { return scipy_openblas_get_corename(); }
int num_threads() { return scipy_openblas_get_num_threads(); }
void set_num_threads(int n) { scipy_openblas_set_num_threads(n); }
void run_jobs_on_openmp(bool on) {
    scipy_openblas_set_threads_callback_function(on ? openmp_threads_callback : nullptr);
}

}  // namespace fl::blas
