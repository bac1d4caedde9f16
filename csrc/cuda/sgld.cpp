// CUDA glue of the SGLD op family: argument checks, device guard, current stream, launch
// check (for the list op here, for the TensorTable op through run_sgld_table_cuda). The
// kernels are in sgld_kernels.cu.
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstring>
#include <optional>

#include "lift_ext/sgld.h"
#include "lift_ext/sgld_args.h"
#include "lift_ext/sgld_run.h"

namespace lift_ext {
namespace {

void run_sgld_cuda(const SgldCall& call, const at::Tensor& first_param) {
  if (call.slots.empty()) return;
  TORCH_CHECK(first_param.is_cuda(), "params must be CUDA tensors here, got ",
              first_param.device());
  const c10::cuda::CUDAGuard guard(first_param.device());
  launch_sgld_cuda(call.slots.data(), static_cast<int64_t>(call.slots.size()), call.grad_dtype,
                   call.scalars, c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void sgld_step_list_cuda(at::TensorList params, at::TensorList grads, at::TensorList prior_means,
                         at::TensorList accums, at::TensorList square_avgs, double lr,
                         double temperature, double prior_precision, double alpha, double eps,
                         int64_t seed, int64_t offset,
                         const std::optional<at::Tensor>& rng_state) {
  if (!rng_state.has_value()) {
    const SgldCall call = prepare_sgld_call(params, grads, prior_means, accums, square_avgs, lr,
                                            temperature, prior_precision, alpha, eps, seed,
                                            offset);
    if (!params.empty()) run_sgld_cuda(call, params[0]);
    return;
  }
  TORCH_CHECK(rng_state->is_cuda(), "rng_state must be a CUDA tensor here, got ",
              rng_state->device());
  check_rng_state(*rng_state, params.empty() ? rng_state->device() : params[0].device(),
                       seed, offset);
  // seed / offset live on the device: the host checks see placeholders (0, 0).
  const SgldCall call = prepare_sgld_call(params, grads, prior_means, accums, square_avgs, lr,
                                          temperature, prior_precision, alpha, eps, 0, 0);
  const c10::cuda::CUDAGuard guard(rng_state->device());
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  int64_t* state = rng_state->data_ptr<int64_t>();
  if (!call.slots.empty()) {
    launch_sgld_cuda(call.slots.data(), static_cast<int64_t>(call.slots.size()), call.grad_dtype,
                     call.scalars, stream, state);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  launch_advance_offset_cuda(state, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void upload_slots_cuda(const SgldSlot* slots, int64_t count, DeviceSlots& out) {
  TORCH_CHECK(c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None,
              "a TensorTable cannot be built during CUDA-graph capture (its slots are copied to "
              "the device when it is built): build it before capturing");
  const c10::cuda::CUDAGuard guard(out.stream.device());
  const auto bytes = static_cast<int64_t>(count * sizeof(SgldSlot));
  // From pinned memory, so the copy does not wait; the pinned block is not reused before the
  // copy has run (the host allocator records the stream).
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), slots, static_cast<size_t>(bytes));
  out.stream = c10::cuda::getCurrentCUDAStream(out.stream.device_index());
  out.bytes = host.to(at::TensorOptions().device(out.stream.device()), /*non_blocking=*/true,
                      /*copy=*/true);
  out.count = count;
  out.begin = slots[0].base;
  out.end = slots[count - 1].base + slots[count - 1].numel;
  out.uploaded.record(out.stream);
}

void run_sgld_table_cuda(const DeviceSlots& table, GradDtype grad_dtype,
                         const SgldScalars& scalars, int64_t* rng_state) {
  const c10::cuda::CUDAGuard guard(table.stream.device());
  const c10::cuda::CUDAStream current =
      c10::cuda::getCurrentCUDAStream(table.stream.device_index());
  if (table.count > 0) {  // a table of empty tensors has no slots (and no upload)
    if (current.unwrap() != table.stream) {
      // Another stream than the upload's: order it after the copy (during a capture as a
      // wait on an event from outside the graph), and keep the slots' memory from being
      // reused before this stream's kernels have read it.
      const bool capturing =
          c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
      C10_CUDA_CHECK(cudaStreamWaitEvent(
          current.stream(), static_cast<cudaEvent_t>(table.uploaded.eventId()),
          capturing ? cudaEventWaitExternal : cudaEventWaitDefault));
      c10::cuda::CUDACachingAllocator::recordStream(table.bytes.storage().data_ptr(), current);
    }
    launch_sgld_table_cuda(static_cast<const SgldSlot*>(table.bytes.const_data_ptr()),
                           table.count, table.begin, table.end, grad_dtype, scalars,
                           current.stream(), rng_state);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (rng_state != nullptr) {
    launch_advance_offset_cuda(rng_state, current.stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

namespace {

void philox_normal_cuda(const at::Tensor& out, int64_t seed, int64_t offset) {
  check_philox_normal_args(out, seed, offset);
  const c10::cuda::CUDAGuard guard(out.device());
  launch_philox_normal_cuda(out.data_ptr<float>(), out.numel(), static_cast<uint64_t>(seed),
                            static_cast<uint64_t>(offset),
                            c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor philox_words_cuda(const at::Tensor& counters, const at::Tensor& keys) {
  at::Tensor words = check_philox_words_args(counters, keys);
  const c10::cuda::CUDAGuard guard(counters.device());
  launch_philox_words_cuda(counters.data_ptr<int64_t>(), keys.data_ptr<int64_t>(),
                           words.data_ptr<int64_t>(), counters.size(0),
                           c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return words;
}

}  // namespace

TORCH_LIBRARY_IMPL(lift_ext, CUDA, m) {
  m.impl("philox4x32_10", &philox_words_cuda);
  m.impl("sgld_step_list_", &sgld_step_list_cuda);
  m.impl("philox_normal_", &philox_normal_cuda);
}

}  // namespace lift_ext
