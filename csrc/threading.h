#pragma once
#include <string>

namespace fl::threads {

// Who owns the cores. Called once when the module loads.
void init();
// Sets the thread count of our OpenMP pool, which also runs the GEMM tiles (without OpenMP:
// OpenBLAS's own thread count).
void set_num_threads(int n);
int num_threads();
bool openmp_enabled();
// "openmp-tiles" when GEMMs run as single-threaded OpenBLAS tiles on the OpenMP pool,
// "openblas" when OpenBLAS keeps its own threads (builds without OpenMP, where our kernels
// are single-threaded).
std::string blas_threading();

}  // namespace fl::threads
