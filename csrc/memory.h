#pragma once
#include <string>

namespace fl::memory {

// Asks the C library to keep freed memory for reuse instead of returning it to the kernel
// (memory.cpp says why). Returns whether it took effect: false where the C library is not
// glibc or refuses (AddressSanitizer's allocator, say). Called once when fastlayers loads,
// unless FASTLAYERS_RETAIN_HEAP=0.
bool retain_heap();
// "retained" once retain_heap() took effect, else "default".
std::string heap_policy();

}  // namespace fl::memory
