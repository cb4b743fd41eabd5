#include "checks.h"

namespace fl::bind {

void bind_conv(py::module_& /*m*/) {}

}  // namespace fl::bind
