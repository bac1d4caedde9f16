// Refusal of aliasing inside one call: a tensor the call writes may not share a byte with any
// other tensor of the call (with two threads the result would depend on the schedule: a
// data race), while tensors it only reads may overlap each other.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

namespace lift_ext {

// The bytes [begin, end) of one tensor of a call (begin < end: empty tensors have none).
struct MemoryRange {
  uintptr_t begin;
  uintptr_t end;
};

// One argument list of a call: its name in messages, whether the call writes its tensors, and
// how many ranges it has.
struct MemoryRole {
  const char* name;
  bool written;
  size_t count;
};

// Raises a c10::Error naming both tensors when two ranges overlap and one of them is written.
// `ranges` holds each role's ranges one after the other, in the order of `roles`; the k-th
// range of a role is its tensor list_index[k] (k itself when list_index is empty) in messages
// ("grads[7]"; `indexed` false: "grads", a call of single tensors). Cost: one sort by
// address, O(n log n) in the number of tensors and independent of their sizes; about O(n)
// when each role's tensors are nearly in address order (either direction: tensors allocated
// one after another) and the roles' address spans do not interleave.
void check_disjoint(const std::vector<MemoryRange>& ranges, c10::ArrayRef<MemoryRole> roles,
                    c10::ArrayRef<uint32_t> list_index, bool indexed);

// One tensor argument of a call of single tensors (the phi and mixture ops): its name, the
// tensor (undefined or empty: no bytes), whether the call writes it.
struct NamedTensor {
  const char* name;
  const at::Tensor* tensor;
  bool written;
};

// check_disjoint over the bytes of `tensors`: a written tensor sharing memory with any other
// argument of the call is refused, naming both.
void check_tensors_disjoint(std::initializer_list<NamedTensor> tensors);

}  // namespace lift_ext
