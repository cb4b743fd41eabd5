#include "blas.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

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

// OpenBLAS's AVX-512 kernel sets (SkylakeX, Cooperlake, SapphireRapids; AMD's AVX-512 cores
// get SkylakeX) compute a GEMM of at most 10^6 multiply-adds (M*N*K) straight from its
// operands, without packing them, when op(B) is not transposed (the NN and TN forms in
// row-major terms; OpenBLAS's sgemm_small_kernel_permit). Cut into pieces that size, the
// GEMMs in which packing is a large share of the work run faster than in any packed tiling
// (2 threads, measured): simple_cnn's fc1 forward (100,4320) @ (4320,100), 176 -> 215
// GFLOP/s in slices of K; its weight gradient x^T @ dout, (4320,100) over K = 100, 188 -> 215
// GFLOP/s in 44 row tiles; deep_cnn's fc1 forward (100,1024) @ (1024,50), 163 -> 206 GFLOP/s.
// Packing's buffers also stop evicting the step's other data. float32 only: float64 serves
// the gradient checks, whose speed does not matter, and keeps the cuts it always had.
constexpr double kSmallGemm = 1e6;
std::atomic<int> small_tiles_mode{-1};  // -1: follow the core, 0: off, 1: on (tests)

bool core_has_small_gemm() {
    static const bool has = [] {
        const std::string core = scipy_openblas_get_corename();
        return core == "SkylakeX" || core == "Cooperlake" || core == "SapphireRapids";
    }();
    return has;
}

bool small_tiles_on() {
    const int mode = small_tiles_mode.load(std::memory_order_relaxed);
    return mode < 0 ? core_has_small_gemm() : mode == 1;
}

template <class T>
Plan make_plan(bool /*ta*/, bool tb, i64 M, i64 N, i64 K) {
    // With separate pools (the thread-pool test) one untiled call, which OpenBLAS threads itself.
    if (separate_pools.load(std::memory_order_relaxed)) return {'r', 1, 1};
    Plan packed{M >= N ? 'r' : 'c', tile_count(M, N, K), 1};
    const double mnk = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
    if (!std::is_same_v<T, float> || tb || mnk <= kSmallGemm || !small_tiles_on()) return packed;
    const i64 extent = std::max(M, N), other = std::min(M, N);
    // Tiles along the longer side of C, as many as make each one small, rounded up to a
    // multiple of 4 so that 2 or 4 threads get equal shares; worth it while they are at
    // least 32 wide (narrower, the per-call cost shows).
    const double width = kSmallGemm / (static_cast<double>(other) * static_cast<double>(K));
    if (width >= 32) {
        i64 tiles = (extent + static_cast<i64>(width) - 1) / static_cast<i64>(width);
        tiles = (tiles + 3) / 4 * 4;
        if (extent / tiles >= 32) return {packed.cut, tiles, 1};
    }
    // Otherwise C is small and K long: cut K into small slices, 4 groups of them. Each group
    // accumulates its slices in order into its own partial C, the first into C itself; the
    // partials are added afterwards, in group order. Slices stay at least 64 deep.
    const double depth = kSmallGemm / (static_cast<double>(M) * static_cast<double>(N));
    if (depth >= 64) {
        const i64 per_slice = static_cast<i64>(depth);
        const i64 groups = 4;
        i64 slices = (K + per_slice - 1) / per_slice;
        slices = (slices + groups - 1) / groups * groups;
        return {'k', slices, groups};
    }
    return packed;
}

template <class T>
void gemm_depth_cut(bool ta, bool tb, i64 M, i64 N, i64 K, T alpha, const T* A, i64 lda, const T* B, i64 ldb,
                    T beta, T* C, i64 ldc, const Plan& plan) {
    const i64 groups = plan.groups, per_group = plan.tiles / plan.groups;
    std::vector<T> partial(static_cast<size_t>(checked_mul(checked_mul(groups - 1, M), N)));
    parallel_for(groups, [&](i64 g) {
        T* c = g == 0 ? C : partial.data() + (g - 1) * M * N;
        const i64 ldc_g = g == 0 ? ldc : N;
        for (i64 s = 0; s < per_group; ++s) {
            const i64 slice = g * per_group + s;
            const i64 k0 = K * slice / plan.tiles, k1 = K * (slice + 1) / plan.tiles;
            // Columns k of op(A): A (M,K) column offset, or A^T stored (K,M) row offset; rows k
            // of B (K,N) (op(B) is never transposed in this plan).
            const T* a = ta ? A + k0 * lda : A + k0;
            const T* b = B + k0 * ldb;
            const T first_beta = g == 0 ? beta : T(0);
            call(ta, tb, M, N, k1 - k0, alpha, a, lda, b, ldb, s == 0 ? first_beta : T(1), c, ldc_g);
        }
    });
    parallel_chunks(M, [&](i64 m0, i64 m1) {
        for (i64 m = m0; m < m1; ++m) {
            T* row = C + m * ldc;
            for (i64 g = 1; g < groups; ++g) {
                const T* p = partial.data() + (g - 1) * M * N + m * N;
                for (i64 n = 0; n < N; ++n) row[n] += p[n];
            }
        }
    }, 16);
}

template <class T>
void gemm_tiled(bool ta, bool tb, i64 M, i64 N, i64 K, T alpha, const T* A, i64 lda, const T* B, i64 ldb, T beta,
                T* C, i64 ldc) {
    if (M == 0 || N == 0) return;
    const Plan plan = make_plan<T>(ta, tb, M, N, K);
    if (plan.cut == 'k') {
        gemm_depth_cut(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, plan);
        return;
    }
    const i64 tiles = plan.tiles;
    if (tiles == 1) {
        call(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    const bool rows = plan.cut == 'r';
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

Plan plan(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, bool single) {
    return single ? make_plan<float>(trans_a, trans_b, M, N, K) : make_plan<double>(trans_a, trans_b, M, N, K);
}
void set_small_tiles(int mode) { small_tiles_mode.store(mode < 0 ? -1 : mode > 0 ? 1 : 0); }
bool small_tiles() { return small_tiles_on(); }
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
