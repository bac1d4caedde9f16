// The float32 range check of the kernels' scalars: the kernels compute in float32, so a
// hyper-parameter (or a value derived from one, like 1 / sigma^2) beyond float32's largest
// finite value would become inf inside them. Shared by the SGLD, phi and mixture checks.
#pragma once

#include <cfloat>
#include <cmath>

#include <c10/util/Exception.h>

namespace lift_ext {

// `value` as a float, refused by `name` (with `meaning`, e.g. "1 / sigma^2") unless finite and
// within float32's range.
inline float float32_scalar(const char* name, double value, const char* meaning = "") {
  TORCH_CHECK(std::isfinite(value) && std::fabs(value) <= FLT_MAX, name, " must be within float32's "
              "range (|value| <= ", FLT_MAX, ")", meaning, ", got ", value);
  return static_cast<float>(value);
}

}  // namespace lift_ext
