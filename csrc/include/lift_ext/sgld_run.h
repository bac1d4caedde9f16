// The backends' runners of a checked SGLD call, shared by the list ops (csrc/cpu/sgld.cpp,
// csrc/cuda/sgld.cpp) and the TensorTable ops (csrc/table.cpp). Nothing here checks its
// arguments: the callers ran prepare_sgld_scalars / prepare_sgld_tensors first.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include "lift_ext/sgld.h"

namespace lift_ext {

// The step over `count` slots (sorted by base, all non-empty) on the CPU, in the calling
// thread and at::parallel_for's workers. Shows in torch.profiler as "lift_ext::sgld_cpu_kernel".
void run_sgld_cpu(const SgldSlot* slots, int64_t count, GradDtype grad_dtype,
                  const SgldScalars& scalars);

// The slots of a TensorTable in device memory, and how the host knows they are there.
struct DeviceSlots {
  at::Tensor bytes;      // the SgldSlot array, uint8 on the device
  int64_t count = 0;     // slots
  int64_t begin = 0;     // flattened element range the slots cover: [begin, end)
  int64_t end = 0;
  c10::Stream stream;    // the stream the copy was issued on
  c10::Event uploaded;   // recorded on `stream` after the copy

  explicit DeviceSlots(const c10::Device& device)
      : stream(c10::Stream::DEFAULT, device), uploaded(device.type()) {}
};

#if defined(LIFT_EXT_WITH_CUDA)
// Copies `count` slots (host memory) to `out` on the current stream of out's device, without
// waiting for the copy; refused during CUDA-graph capture (the copy would be captured).
void upload_slots_cuda(const SgldSlot* slots, int64_t count, DeviceSlots& out);

// The step over a table's device slots, launched on the current stream of their device (which
// first waits for the upload when it is not the upload's stream). With rng_state (device
// memory, int64 [seed, offset]) the kernel reads seed and offset from it and a second launch
// adds 1 to the offset afterwards (graph-safe form).
void run_sgld_table_cuda(const DeviceSlots& table, GradDtype grad_dtype,
                         const SgldScalars& scalars, int64_t* rng_state);
#endif

}  // namespace lift_ext
