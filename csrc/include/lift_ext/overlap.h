// Refusal of aliasing inside one call: a tensor the call writes may not share a byte with any
// other tensor of the call (with two threads the result would depend on the schedule: a
// data race), while tensors it only reads may overlap each other.
#pragma once

#include <cstdint>
#include <vector>

#include <c10/util/ArrayRef.h>

namespace lift_ext {

// The bytes [begin, end) of one tensor of a call (begin < end: empty tensors have none), the
// argument list it came from (`role`, an index into the roles) and its index in that list.
struct MemoryRange {
  uintptr_t begin;
  uintptr_t end;
  uint32_t index;
  uint32_t role;
};

// One argument list of a call: its name in messages and whether the call writes its tensors.
struct MemoryRole {
  const char* name;
  bool written;
};

// Raises a c10::Error naming both tensors when two ranges overlap and one of them is written.
// `ranges` holds the ranges of each role contiguously, roles in increasing order; `indexed`
// false names a tensor without its index (a call of single tensors). Reorders `ranges`.
// Cost: one sort by address, O(n log n) in the number of tensors and independent of their
// sizes; O(n) when each role's list is already in address order, ascending or descending
// (the usual case: tensors allocated one after the other).
void check_disjoint(std::vector<MemoryRange>& ranges, c10::ArrayRef<MemoryRole> roles, bool indexed);

}  // namespace lift_ext
