// Every radius word and every angle word through each CPU path's Box-Muller code
// (lift_ext::box_muller_on), compared bit for bit with box_muller in philox.h compiled here
// with the same flags. Pass 1: all 2^24 radius values (r1 >> 8) with random low bits and random
// angle words; pass 2: all 2^24 angle positions ((r2 >> 6) & (2^24 - 1)) with random quadrants,
// low bits and radius words. Prints one line per path; exits 1 on any difference.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "lift_ext/cpu_normals.h"
#include "lift_ext/philox.h"

int main() {
  using lift_ext::NormalsIsa;
  constexpr int64_t kValues = int64_t{1} << 24;
  std::mt19937 rng(20261207);
  std::vector<uint32_t> r1(2 * kValues), r2(2 * kValues);
  for (int64_t v = 0; v < kValues; ++v) {
    r1[v] = (static_cast<uint32_t>(v) << 8) | (rng() & 0xFFu);
    r2[v] = rng();
    r1[kValues + v] = rng();
    r2[kValues + v] = (rng() & 0xC000003Fu) | (static_cast<uint32_t>(v) << 6);
  }
  std::vector<float> want0(r1.size()), want1(r1.size()), z0(r1.size()), z1(r1.size());
  for (size_t i = 0; i < r1.size(); ++i) lift_ext::box_muller(r1[i], r2[i], want0[i], want1[i]);
  int failed = 0;
  for (int p = 0; p < lift_ext::kNumNormalsIsas; ++p) {
    const auto isa = static_cast<NormalsIsa>(p);
    if (!lift_ext::normals_isa_supported(isa)) continue;
    lift_ext::box_muller_on(isa, r1.data(), r2.data(), static_cast<int64_t>(r1.size()), z0.data(), z1.data());
    int64_t differ = 0;
    for (size_t i = 0; i < r1.size(); ++i) {
      if (std::memcmp(&z0[i], &want0[i], 4) == 0 && std::memcmp(&z1[i], &want1[i], 4) == 0) continue;
      if (differ++ < 3)
        std::printf("  %s r1=%08x r2=%08x: %a %a, want %a %a\n", lift_ext::normals_isa_name(isa), r1[i], r2[i],
                    z0[i], z1[i], want0[i], want1[i]);
    }
    std::printf("%s: %zu word pairs, %lld differ\n", lift_ext::normals_isa_name(isa), r1.size(),
                static_cast<long long>(differ));
    failed |= differ != 0;
  }
  return failed;
}
