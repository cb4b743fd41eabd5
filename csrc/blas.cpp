#include "blas.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <limits>

namespace fl::blas {
namespace {

// Set only by the thread-pool test, to recreate the configuration it guards against.
std::atomic<bool> separate_pools{false};

blasint to_blasint(i64 v, const char* what) {
    if (v < 0 || v > std::numeric_limits<blasint>::max())
        throw std::overflow_error(std::string("GEMM dimension ") + what + " = " + std::to_string(v) +
                                  " does not fit OpenBLAS's 32-bit integer");
    return static_cast<blasint>(v);
}

// OpenBLAS jobs executed as one OpenMP worksharing loop on our pool. fastlayers keeps
// OpenBLAS single-threaded (see threading.cpp), so this only runs if something raises
// OpenBLAS's thread count behind our back: its jobs then still land on the pool that owns
// the cores instead of waking a second set of spinning threads.
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

template <class T>
void call(bool ta, bool tb, i64 M, i64 N, i64 K, T alpha, const T* A, i64 lda, const T* B, i64 ldb, T beta, T* C,
          i64 ldc) {
    const auto opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
    if constexpr (std::is_same_v<T, float>)
        scipy_cblas_sgemm(CblasRowMajor, opa, opb, to_blasint(M, "M"), to_blasint(N, "N"), to_blasint(K, "K"), alpha,
                          A, to_blasint(lda, "lda"), B, to_blasint(ldb, "ldb"), beta, C, to_blasint(ldc, "ldc"));
    else
        scipy_cblas_dgemm(CblasRowMajor, opa, opb, to_blasint(M, "M"), to_blasint(N, "N"), to_blasint(K, "K"), alpha,
                          A, to_blasint(lda, "lda"), B, to_blasint(ldb, "ldb"), beta, C, to_blasint(ldc, "ldc"));
}

// How a GEMM is cut into independent tiles of C for the OpenMP pool: along the rows when
// M >= N (each tile then packs all of B, the smaller operand to repeat), else along the
// columns. The cut depends on the shape alone, never on the thread count, and each tile is
// one single-threaded OpenBLAS call, so every element of C is computed by the same code in
// the same order with 1 thread or 16: GEMM results are bitwise independent of the thread
// count (OpenBLAS's own threading is not: its 1- and 2-thread paths round differently).
// Tiles come in powers of two, for equal shares on 2, 4 or 8 threads, and each carries at
// least ~1 MFLOP so that scheduling stays small against it.
i64 tile_count(i64 M, i64 N, i64 K) {
    const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
    const double by_work = flops / 1e6;
    const i64 extent = std::max(M, N);
    // At least 32 rows (columns) per tile, and 256 once there are more than two tiles: every
    // tile repacks the other operand, which measurably costs at 32-row tiles of a large GEMM
    // (2048^3 on one thread: 57 GFLOP/s in 64 tiles, 97 in 8, 103 untiled).
    const double by_size = static_cast<double>(std::min(extent / 32, std::max<i64>(2, extent / 256)));
    const double limit = std::min({by_work, by_size, 64.0});
    i64 tiles = 1;
    while (static_cast<double>(tiles * 2) <= limit) tiles *= 2;
    return tiles;
}

template <class T>
void gemm_tiled(bool ta, bool tb, i64 M, i64 N, i64 K, T alpha, const T* A, i64 lda, const T* B, i64 ldb, T beta,
                T* C, i64 ldc) {
    if (M == 0 || N == 0) return;
    const i64 tiles = separate_pools.load(std::memory_order_relaxed) ? 1 : tile_count(M, N, K);
    if (tiles == 1) {
        call(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    const bool rows = M >= N;
    const i64 extent = rows ? M : N;
    parallel_for(tiles, [&](i64 t) {
        const i64 begin = extent * t / tiles, end = extent * (t + 1) / tiles;
        if (rows) {
            // Rows m of C need rows m of op(A): A (M,K) row offset, or A^T stored (K,M) column offset.
            const T* a = ta ? A + begin : A + begin * lda;
            call(ta, tb, end - begin, N, K, alpha, a, lda, B, ldb, beta, C + begin * ldc, ldc);
        } else {
            // Columns n of C need columns n of op(B): B (K,N) column offset, or B^T stored (N,K) row offset.
            const T* b = tb ? B + begin * ldb : B + begin;
            call(ta, tb, M, end - begin, K, alpha, A, lda, b, ldb, beta, C + begin, ldc);
        }
    });
}

}  // namespace

void gemm(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
          const float* B, i64 ldb, float beta, float* C, i64 ldc) {
    gemm_tiled(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, double alpha, const double* A, i64 lda,
          const double* B, i64 ldb, double beta, double* C, i64 ldc) {
    gemm_tiled(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

std::string name() { return "OpenBLAS"; }
std::string config() { return scipy_openblas_get_config(); }
std::string corename() { return scipy_openblas_get_corename(); }
int num_threads() { return scipy_openblas_get_num_threads(); }
void set_num_threads(int n) { scipy_openblas_set_num_threads(n); }
void run_jobs_on_openmp(bool on) {
    scipy_openblas_set_threads_callback_function(on ? openmp_threads_callback : nullptr);
}
void use_separate_pools(bool on, int threads) {
    separate_pools.store(on);
    run_jobs_on_openmp(!on);
    set_num_threads(on ? threads : 1);
}

}  // namespace fl::blas
