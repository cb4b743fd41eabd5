// Heap retention.
//
// Python allocates every kernel output, so a training step allocates and frees the same
// arrays, megabytes each, every step. glibc serves requests over its mmap threshold with
// fresh mappings, and hands the top of the heap back to the kernel once more than its trim
// threshold lies free there. Its dynamic thresholds (raised to the size of the largest
// mapping freed so far, trim at twice that) follow one array at a time: when deep_cnn's
// backward frees several 5 MB arrays together, the heap is trimmed and the next step faults
// every page back in, zeroed by the kernel on one core (measured: ~190 minor faults and
// ~0.45 ms of a 17 ms step; none in simple_cnn or the MLP, whose arrays are smaller).
// Fixed thresholds end that: arrays up to 32 MiB (glibc's largest mmap threshold) come
// from the heap, and up to 256 MiB of free heap stays mapped. Memory the process freed is
// then reused rather than returned, as a training loop wants; an allocation over 32 MiB
// still gets its own mapping and is returned when freed.
#include "memory.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace fl::memory {

namespace {
bool retained = false;
constexpr int kMmapThreshold = 32 << 20;
constexpr int kTrimThreshold = 256 << 20;
}  // namespace

bool retain_heap() {
#if defined(__GLIBC__)
    // Either call alone turns glibc's dynamic thresholds off, so both are set; mallopt
    // returns 1 on success.
    retained = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 && mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
#endif
    return retained;
}

std::string heap_policy() { return retained ? "retained" : "default"; }

}  // namespace fl::memory
