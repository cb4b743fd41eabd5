// The BLAS seam: the only place that names OpenBLAS. Every GEMM in fastlayers goes through
// fl::blas::gemm, row-major, with sizes in 64-bit that are checked to fit OpenBLAS's 32-bit
// blasint before the call (scipy-openblas32 is the LP64 build). With OpenMP, gemm splits the
// work into shape-determined tiles on the OpenMP pool and runs each as a single-threaded
// OpenBLAS call, so its results do not depend on the thread count (blas.cpp); called from
// inside a parallel_for body, its tiles run one after another on the calling thread.
#pragma once
#include <string>

#include "common.h"

namespace fl::blas {

// C (M,N) = alpha * op(A) (M,K) @ op(B) (K,N) + beta * C, all row-major.
// op(A) is A (M,K) with leading dimension lda, or A^T when trans_a (A stored (K,M)).
void gemm(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
          const float* B, i64 ldb, float beta, float* C, i64 ldc);
void gemm(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, double alpha, const double* A, i64 lda,
          const double* B, i64 ldb, double beta, double* C, i64 ldc);

// How gemm cuts a GEMM of this shape: cut 'r' (rows of C), 'c' (columns) or 'k' (the depth
// K, in `groups` groups of slices whose partial products are added in group order), into
// `tiles` tiles or slices. It depends on the shape, the dtype and the BLAS core, never on the
// thread count.
struct Plan {
    char cut;
    i64 tiles;
    i64 groups;
};
Plan plan(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, bool single);
// For the tests: -1 cuts for OpenBLAS's small-matrix kernels where its core has them (the
// default), 0 never, 1 always (whatever the core: the results stay right, only slower).
void set_small_tiles(int mode);
bool small_tiles();

std::string name();     // "OpenBLAS"
std::string config();   // OpenBLAS's own build description (version, core, threading)
std::string corename(); // the kernel set chosen for this CPU
int num_threads();
void set_num_threads(int n);
// Routes OpenBLAS's parallel jobs onto the OpenMP pool (see threading.cpp).
void run_jobs_on_openmp(bool on);
// For the thread-pool test only: on = OpenBLAS threaded on its own pool (`threads` threads),
// GEMMs untiled, as a naive build would be; off = fastlayers' configuration.
void use_separate_pools(bool on, int threads);

}  // namespace fl::blas
