#pragma once
#include <string>

namespace fl::threads {

// Who owns the cores. Called once when the module loads.
void init();
// Sets the thread count of both our OpenMP kernels and OpenBLAS's GEMMs.
void set_num_threads(int n);
int num_threads();
bool openmp_enabled();
// "openmp-callback" when OpenBLAS runs its jobs on the OpenMP pool, "openblas" when it keeps
// its own threads (builds without OpenMP, where our kernels are single-threaded).
std::string blas_threading();

}  // namespace fl::threads
