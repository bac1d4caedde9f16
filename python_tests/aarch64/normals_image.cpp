// The CPU normals (csrc/cpu/normals.cpp) as an aarch64 image without a C library, for
// test_cpu_normals_aarch64.py to run in an emulator: the entry point lift_fill_normals calls
// fill_normals_on, lift_isa reports the path the aarch64 build picks, and the memory routines
// the compiler may call are defined here (compiled with -fno-builtin, so they call nothing).
#include <cstddef>
#include <cstdint>
#include "lift_ext/cpu_normals.h"
extern "C" {
void* memmove(void* dst, const void* src, size_t n) {
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  if (d < s) for (size_t i = 0; i < n; ++i) d[i] = s[i];
  else for (size_t i = n; i > 0; --i) d[i - 1] = s[i - 1];
  return dst;
}
void* memcpy(void* dst, const void* src, size_t n) { return memmove(dst, src, n); }
void* memset(void* dst, int value, size_t n) {
  auto* d = static_cast<unsigned char*>(dst);
  for (size_t i = 0; i < n; ++i) d[i] = static_cast<unsigned char>(value);
  return dst;
}
void lift_fill_normals(int isa, uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                       float* out) {
  lift_ext::fill_normals_on(static_cast<lift_ext::NormalsIsa>(isa), seed, offset, first_group, num_groups, out);
}
int lift_isa() { return static_cast<int>(lift_ext::normals_isa()); }
}
