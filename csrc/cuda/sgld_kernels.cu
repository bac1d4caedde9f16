// CUDA kernels of the SGLD op family (no ATen here: the glue is csrc/cuda/sgld.cpp).
//
// One thread handles one group of 4 consecutive elements of the flattened call per loop
// iteration and draws their 4 normals from one Philox counter. Each block owns one contiguous
// run of groups (the grid is one wave of resident blocks), so a thread's groups move forward
// through the tensor list and its slot lookup is a rare step, not a search per group. A group
// that lies inside one tensor with 16-byte aligned addresses takes vector loads and stores,
// issued before the noise is computed so that memory and arithmetic overlap; others (tensor
// borders, odd sizes) go element by element. A list call's tensor table travels in the kernel
// parameters (up to kMaxListSlots tensors per launch; CUDA >= 12.1 allows 32 KiB of them);
// short lists use a smaller table, so their launches copy fewer parameter bytes. A TensorTable
// keeps its table in device memory, built once: its launch passes a pointer (any length, one
// launch), and the kernel body is the same, templated on where the slots live.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "lift_ext/cuda_grid.cuh"
#include "lift_ext/sgld.h"

namespace lift_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxListSlots = 448;
constexpr int kShortListSlots = 96;

template <int kCapacity>
struct SlotTable {
  SgldSlot slots[kCapacity];
  int count;
  int64_t end;  // one past the last flattened element index covered by this launch
  int64_t begin;  // first flattened element index covered by this launch

  static constexpr bool kSingle = kCapacity == 1;
  __device__ __forceinline__ const SgldSlot& slot(int i) const { return slots[i]; }
  __device__ __forceinline__ int64_t base(int i) const { return slots[i].base; }
};

// The slots of a TensorTable, in device memory (read only while kernels run).
struct GlobalSlots {
  const SgldSlot* __restrict__ slots;
  int count;
  int64_t end;
  int64_t begin;

  static constexpr bool kSingle = false;
  // A copy: the kernel's stores through the slots' float pointers cannot alias it, so its
  // fields stay in registers.
  __device__ __forceinline__ SgldSlot slot(int i) const { return slots[i]; }
  __device__ __forceinline__ int64_t base(int i) const {
    return static_cast<int64_t>(__ldg(reinterpret_cast<const long long*>(&slots[i].base)));
  }
};
static_assert(sizeof(SlotTable<kMaxListSlots>) < 31 * 1024, "kernel parameters too large");

template <typename G>
__device__ __forceinline__ float load_grad(const void* grad, int64_t i);
template <>
__device__ __forceinline__ float load_grad<float>(const void* grad, int64_t i) {
  return static_cast<const float*>(grad)[i];
}
template <>
__device__ __forceinline__ float load_grad<__nv_bfloat16>(const void* grad, int64_t i) {
  return __bfloat162float(static_cast<const __nv_bfloat16*>(grad)[i]);
}
template <>
__device__ __forceinline__ float load_grad<__half>(const void* grad, int64_t i) {
  return __half2float(static_cast<const __half*>(grad)[i]);
}

// Loads 4 consecutive grads starting at i (aligned for the vector width of G).
template <typename G>
__device__ __forceinline__ void load_grad4(const void* grad, int64_t i, float out[4]);
template <>
__device__ __forceinline__ void load_grad4<float>(const void* grad, int64_t i, float out[4]) {
  const float4 v = *reinterpret_cast<const float4*>(static_cast<const float*>(grad) + i);
  out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
}
template <>
__device__ __forceinline__ void load_grad4<__nv_bfloat16>(const void* grad, int64_t i,
                                                         float out[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const __nv_bfloat16*>(grad) + i);
  const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
  const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
  out[0] = __low2float(a); out[1] = __high2float(a);
  out[2] = __low2float(b); out[3] = __high2float(b);
}
template <>
__device__ __forceinline__ void load_grad4<__half>(const void* grad, int64_t i, float out[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const __half*>(grad) + i);
  const __half2 a = *reinterpret_cast<const __half2*>(&raw.x);
  const __half2 b = *reinterpret_cast<const __half2*>(&raw.y);
  out[0] = __low2float(a); out[1] = __high2float(a);
  out[2] = __low2float(b); out[3] = __high2float(b);
}

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void store4(float* p, const float v[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}

// Index of the slot holding flattened element e (slots sorted by base, all non-empty).
template <typename Table>
__device__ __forceinline__ int find_slot(const Table& table, int64_t e) {
  int lo = 0, hi = table.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (table.base(mid) <= e) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// The 4 elements from e0 lie in `slot` and every array of theirs is 16-byte aligned for them.
__device__ __forceinline__ bool group_is_vector(const SgldSlot& slot, int64_t e0, int64_t local,
                                                size_t grad_bytes) {
  return e0 >= slot.base && e0 + 4 <= slot.base + slot.numel && aligned16(slot.param + local) &&
         (reinterpret_cast<uintptr_t>(static_cast<const char*>(slot.grad) + local * grad_bytes) &
          (4 * grad_bytes - 1)) == 0 &&
         (!slot.prior_mean || aligned16(slot.prior_mean + local)) &&
         (!slot.accum || aligned16(slot.accum + local)) &&
         (!slot.square_avg || aligned16(slot.square_avg + local));
}

template <typename Table, typename G>
__global__ void __launch_bounds__(kThreads)
sgld_kernel(const Table table, SgldScalars s, const int64_t* rng_state, int64_t groups_per_block) {
  const bool noise_on = s.noise_scale != 0.0f;
  if (rng_state != nullptr) {  // graph-safe form: seed and offset as of this launch
    s.seed = static_cast<uint64_t>(rng_state[0]);
    s.offset = static_cast<uint64_t>(rng_state[1]);
  }
  const bool use_center = s.prior_precision != 0.0f;
  const int64_t block_first = table.begin / 4 + static_cast<int64_t>(blockIdx.x) * groups_per_block;
  const int64_t last_group = (table.end - 1) / 4;
  const int64_t block_last =
      block_first + groups_per_block - 1 < last_group ? block_first + groups_per_block - 1 : last_group;
  int t = 0;  // slot of this thread's current group; groups only move forward
  bool located = false;
  for (int64_t group = block_first + threadIdx.x; group <= block_last; group += blockDim.x) {
    const int64_t e0 = group * 4;
    if constexpr (!Table::kSingle) {  // one tensor: slot 0, a constant index (no local copy)
      const int64_t first = e0 < table.begin ? table.begin : e0;
      if (!located) {
        t = find_slot(table, first);
        located = true;
      } else {
        while (t + 1 < table.count && table.base(t + 1) <= first) ++t;
      }
    }
    const auto& slot = table.slot(t);
    const int64_t local = e0 - slot.base;
    float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (group_is_vector(slot, e0, local, sizeof(G))) {
      // Every load first, then the noise (pure arithmetic) while they are in flight.
      float theta[4], grad[4], center[4] = {0.0f, 0.0f, 0.0f, 0.0f}, avg[4], acc[4], out[4];
      const float4 tv = load4(slot.param + local);
      load_grad4<G>(slot.grad, local, grad);
      if (use_center && slot.prior_mean) {
        const float4 cv = load4(slot.prior_mean + local);
        center[0] = cv.x; center[1] = cv.y; center[2] = cv.z; center[3] = cv.w;
      }
      if (slot.square_avg) {
        const float4 vv = load4(slot.square_avg + local);
        avg[0] = vv.x; avg[1] = vv.y; avg[2] = vv.z; avg[3] = vv.w;
      }
      if (slot.accum) {
        const float4 av = load4(slot.accum + local);
        acc[0] = av.x; acc[1] = av.y; acc[2] = av.z; acc[3] = av.w;
      }
      theta[0] = tv.x; theta[1] = tv.y; theta[2] = tv.z; theta[3] = tv.w;
      if (noise_on) philox_normal4(s.seed, s.offset, static_cast<uint64_t>(group), z);
      const SgldTerms terms{use_center, slot.square_avg != nullptr, noise_on, slot.accum != nullptr};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        out[k] = sgld_update_value(theta[k], grad[k], z[k], center[k], avg[k], acc[k], terms, s);
      }
      store4(slot.param + local, out);
      if (slot.square_avg) store4(slot.square_avg + local, avg);
      if (slot.accum) store4(slot.accum + local, acc);
    } else {
      if (noise_on) philox_normal4(s.seed, s.offset, static_cast<uint64_t>(group), z);
      for (int k = 0; k < 4; ++k) {
        const int64_t e = e0 + k;
        if (e < table.begin || e >= table.end) continue;
        const auto& sl = table.slot(Table::kSingle ? 0 : find_slot(table, e));
        const int64_t i = e - sl.base;
        const float center = use_center && sl.prior_mean ? sl.prior_mean[i] : 0.0f;
        float avg = sl.square_avg ? sl.square_avg[i] : 0.0f;
        float acc = sl.accum ? sl.accum[i] : 0.0f;
        const SgldTerms terms{use_center, sl.square_avg != nullptr, noise_on, sl.accum != nullptr};
        sl.param[i] = sgld_update_value(sl.param[i], load_grad<G>(sl.grad, i), z[k], center, avg,
                                        acc, terms, s);
        if (sl.square_avg) sl.square_avg[i] = avg;
        if (sl.accum) sl.accum[i] = acc;
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads)
philox_normal_kernel(float* out, int64_t numel, uint64_t seed, uint64_t offset) {
  const int64_t groups = (numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += stride) {
    float z[4];
    philox_normal4(seed, offset, static_cast<uint64_t>(g), z);
    const int64_t e0 = 4 * g;
    if (e0 + 4 <= numel && aligned16(out + e0)) {
      store4(out + e0, z);
    } else {
      for (int k = 0; k < 4 && e0 + k < numel; ++k) out[e0 + k] = z[k];
    }
  }
}

__global__ void philox_words_kernel(const int64_t* counters, const int64_t* keys, int64_t* words,
                                    int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const Philox4 r = philox4x32_10(
      static_cast<uint32_t>(counters[4 * i]), static_cast<uint32_t>(counters[4 * i + 1]),
      static_cast<uint32_t>(counters[4 * i + 2]), static_cast<uint32_t>(counters[4 * i + 3]),
      static_cast<uint32_t>(keys[2 * i]), static_cast<uint32_t>(keys[2 * i + 1]));
  for (int j = 0; j < 4; ++j) words[4 * i + j] = static_cast<int64_t>(r.v[j]);
}

// offset += 1 as an unsigned 64-bit word (the kernels read it unsigned): defined at 2^63 - 1,
// where a signed add would overflow.
__global__ void advance_offset_kernel(int64_t* rng_state) {
  auto* offset = reinterpret_cast<unsigned long long*>(rng_state + 1);
  *offset += 1ULL;
}

// One launch over the element range of `table`: one resident wave of blocks, each taking an
// equal contiguous run of element groups.
template <typename Table, typename G>
void launch_kernel(const Table& table, const SgldScalars& s, cudaStream_t stream,
                   const int64_t* rng_state) {
  const int64_t groups = (table.end - 1) / 4 - table.begin / 4 + 1;
  const int blocks = resident_grid_blocks(sgld_kernel<Table, G>, groups, kThreads);
  const int64_t groups_per_block = (groups + blocks - 1) / blocks;
  sgld_kernel<Table, G><<<blocks, kThreads, 0, stream>>>(table, s, rng_state, groups_per_block);
}

template <int kCapacity, typename G>
void launch_table(const SgldSlot* slots, int count, const SgldScalars& s, cudaStream_t stream,
                  const int64_t* rng_state) {
  SlotTable<kCapacity> table;
  for (int i = 0; i < count; ++i) table.slots[i] = slots[i];
  table.count = count;
  table.begin = slots[0].base;
  table.end = slots[count - 1].base + slots[count - 1].numel;
  launch_kernel<SlotTable<kCapacity>, G>(table, s, stream, rng_state);
}

template <typename G>
void launch_all(const SgldSlot* slots, int64_t num_slots, const SgldScalars& s,
                cudaStream_t stream, const int64_t* rng_state) {
  if (num_slots == 1) {
    launch_table<1, G>(slots, 1, s, stream, rng_state);
    return;
  }
  if (num_slots <= kShortListSlots) {
    launch_table<kShortListSlots, G>(slots, static_cast<int>(num_slots), s, stream, rng_state);
    return;
  }
  // Lists longer than kMaxListSlots go in consecutive launches over disjoint element
  // ranges; a group straddling two launches is split by the [begin, end) test.
  for (int64_t first = 0; first < num_slots; first += kMaxListSlots) {
    const int count = static_cast<int>(std::min<int64_t>(kMaxListSlots, num_slots - first));
    launch_table<kMaxListSlots, G>(slots + first, count, s, stream, rng_state);
  }
}

}  // namespace

void launch_sgld_table_cuda(const SgldSlot* device_slots, int64_t num_slots, int64_t begin,
                            int64_t end, GradDtype grad_dtype, const SgldScalars& scalars,
                            void* stream, const int64_t* rng_state) {
  if (num_slots == 0) return;
  const GlobalSlots table{device_slots, static_cast<int>(num_slots), end, begin};
  auto st = static_cast<cudaStream_t>(stream);
  switch (grad_dtype) {
    case GradDtype::kFloat32:
      launch_kernel<GlobalSlots, float>(table, scalars, st, rng_state);
      break;
    case GradDtype::kBFloat16:
      launch_kernel<GlobalSlots, __nv_bfloat16>(table, scalars, st, rng_state);
      break;
    case GradDtype::kFloat16:
      launch_kernel<GlobalSlots, __half>(table, scalars, st, rng_state);
      break;
  }
}

void launch_sgld_cuda(const SgldSlot* slots, int64_t num_slots, GradDtype grad_dtype,
                      const SgldScalars& scalars, void* stream, const int64_t* rng_state) {
  if (num_slots == 0) return;
  auto st = static_cast<cudaStream_t>(stream);
  switch (grad_dtype) {
    case GradDtype::kFloat32: launch_all<float>(slots, num_slots, scalars, st, rng_state); break;
    case GradDtype::kBFloat16:
      launch_all<__nv_bfloat16>(slots, num_slots, scalars, st, rng_state);
      break;
    case GradDtype::kFloat16: launch_all<__half>(slots, num_slots, scalars, st, rng_state); break;
  }
}

void launch_advance_offset_cuda(int64_t* rng_state, void* stream) {
  advance_offset_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(rng_state);
}

void launch_philox_normal_cuda(float* out, int64_t numel, uint64_t seed, uint64_t offset,
                               void* stream) {
  if (numel == 0) return;
  const int64_t groups = (numel + 3) / 4;
  philox_normal_kernel<<<grid_stride_blocks(groups, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      out, numel, seed, offset);
}

void launch_philox_words_cuda(const int64_t* counters, const int64_t* keys, int64_t* words,
                              int64_t n, void* stream) {
  if (n == 0) return;
  const int blocks = static_cast<int>((n + kThreads - 1) / kThreads);
  philox_words_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(counters, keys,
                                                                                  words, n);
}

}  // namespace lift_ext
