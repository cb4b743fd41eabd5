#include "checks.h"

namespace fl::bind {

void bind_activations(py::module_& /*m*/) {}

}  // namespace fl::bind
