// The Philox normal stream on the CPU, vectorised (AVX-512 / AVX2 / portable code picked once
// per process from the CPU's features, or by $LIFT_EXT_CPU_ISA). Bitwise equal to philox_normal4 in philox.h, which
// the CUDA kernels use, on every path.
#pragma once

#include <cstdint>

namespace lift_ext {

// Arrays that the caller reads element for element right after the normals (the SGLD step's
// parameters, gradients and optional state): the AVX2 and AVX-512 paths request their cache
// lines while they compute, one line between two Box-Muller steps, so that memory streams in
// behind the compute-bound normals instead of after them (benchmarks/NOTES.md entries 17, 18;
// the portable path ignores it). Normal e (e = 0: the first group's first normal) goes with
// the bytes at address[a] + e * element_bytes[a] of array a, for e < count. A request never
// faults, so the addresses need not be valid; the normals do not depend on any of it.
struct NormalsPrefetch {
  static constexpr int kMaxArrays = 5;
  uintptr_t address[kMaxArrays] = {};
  int64_t element_bytes[kMaxArrays] = {};
  int arrays = 0;
  int64_t count = 0;

  // Appends the array `data` (nothing when null) whose element `first` goes with normal 0,
  // elements `bytes` apart. The address is formed in integers: `first` may lie before the
  // array's start (the SGLD step's group rounding), where pointer arithmetic would not be valid.
  void add(const void* data, int64_t first, int64_t bytes) {
    if (data == nullptr || arrays == kMaxArrays) return;
    address[arrays] = reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(first * bytes);
    element_bytes[arrays++] = bytes;
  }
};

// out[4 * j + k] = normal k of element group first_group + j, for j < num_groups
// (element group g holds elements 4g .. 4g+3 of the flattened vector). Writes exactly
// 4 * num_groups floats. `prefetch`: memory to request on the way (optional).
void fill_normals(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                  float* out, const NormalsPrefetch* prefetch = nullptr);

// The code paths of fill_normals, slowest first. kGeneric is portable C++ (compiled for the
// baseline instruction set); kAvx2 and kAvx512 use AVX2 / AVX-512F intrinsics (x86-64 only).
enum class NormalsIsa { kGeneric, kAvx2, kAvx512 };
constexpr int kNumNormalsIsas = 3;

// "generic", "avx2" or "avx512".
const char* normals_isa_name(NormalsIsa isa);

// Whether this build and this CPU can run `isa`.
bool normals_isa_supported(NormalsIsa isa);

// The environment variable that picks the path by name ("generic", "avx2", "avx512"), e.g. to
// time a slower path on a faster CPU or to avoid AVX-512 where it lowers the clock.
constexpr const char* kCpuIsaVariable = "LIFT_EXT_CPU_ISA";

// The path fill_normals takes, decided on the first call: the one kCpuIsaVariable names if
// this CPU runs it, otherwise the fastest supported one.
NormalsIsa normals_isa();

// fill_normals on a given supported path (verification: every path gives the same bits).
void fill_normals_on(NormalsIsa isa, uint64_t seed, uint64_t offset, uint64_t first_group,
                     int64_t num_groups, float* out, const NormalsPrefetch* prefetch = nullptr);

// z0[i], z1[i] = box_muller(r1[i], r2[i]) (philox.h) for i < n, on a given supported path: its
// Box-Muller code alone, on chosen words (verification: every radius and every angle word).
void box_muller_on(NormalsIsa isa, const uint32_t* r1, const uint32_t* r2, int64_t n, float* z0,
                   float* z1);

}  // namespace lift_ext
