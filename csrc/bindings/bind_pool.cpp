#include "checks.h"

namespace fl::bind {

void bind_pool(py::module_& /*m*/) {}

}  // namespace fl::bind
