// The cores' float32 multiply-add peak (peak_fma.cpp), for the benchmarks.
#pragma once
#include "common.h"

namespace fl {

// GFLOP/s of `iterations` rounds of independent 16-lane FMAs on every thread of the pool,
// the best of `repeats` runs; 0 where there is no AVX-512 build to run them.
double peak_fma_gflops(i64 iterations, int repeats);

}  // namespace fl
