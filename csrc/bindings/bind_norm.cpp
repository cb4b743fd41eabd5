#include "checks.h"

namespace fl::bind {

void bind_norm(py::module_& /*m*/) {}

}  // namespace fl::bind
