#include "checks.h"

namespace fl::bind {

void bind_optim(py::module_& /*m*/) {}

}  // namespace fl::bind
