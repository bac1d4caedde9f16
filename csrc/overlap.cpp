#include "lift_ext/overlap.h"

#include <algorithm>
#include <ostream>

#include <c10/util/Exception.h>

namespace lift_ext {
namespace {

bool by_begin(const MemoryRange& a, const MemoryRange& b) { return a.begin < b.begin; }

// Sorts one role's ranges by address: nothing to do when they are ascending already, one
// reversal when descending, a sort otherwise.
void sort_run(MemoryRange* first, MemoryRange* last) {
  if (std::is_sorted(first, last, by_begin)) return;
  std::reverse(first, last);
  if (std::is_sorted(first, last, by_begin)) return;
  std::sort(first, last, by_begin);
}

struct RangeName {
  const MemoryRange& range;
  c10::ArrayRef<MemoryRole> roles;
  bool indexed;
};

std::ostream& operator<<(std::ostream& os, const RangeName& n) {
  os << n.roles[n.range.role].name;
  if (n.indexed) os << "[" << n.range.index << "]";
  return os;
}

[[noreturn]] void refuse(const MemoryRange& a, const MemoryRange& b, c10::ArrayRef<MemoryRole> roles,
                         bool indexed) {
  const bool a_first = a.role < b.role || (a.role == b.role && a.index < b.index);
  const MemoryRange& first = a_first ? a : b;
  const MemoryRange& second = a_first ? b : a;
  TORCH_CHECK(false, RangeName{first, roles, indexed}, " and ", RangeName{second, roles, indexed},
              " share memory (the same tensor twice, or views of one buffer): a tensor the "
              "step writes must not overlap any other tensor of the call");
}

}  // namespace

void check_disjoint(std::vector<MemoryRange>& ranges, c10::ArrayRef<MemoryRole> roles, bool indexed) {
  // Sort each role's run, then merge the runs (at most a handful) into one address order.
  size_t run_start = 0;
  for (size_t i = 1; i <= ranges.size(); ++i) {
    if (i < ranges.size() && ranges[i].role == ranges[run_start].role) continue;
    sort_run(ranges.data() + run_start, ranges.data() + i);
    if (run_start > 0) {
      std::inplace_merge(ranges.begin(), ranges.begin() + static_cast<std::ptrdiff_t>(run_start),
                         ranges.begin() + static_cast<std::ptrdiff_t>(i), by_begin);
    }
    run_start = i;
  }
  // In address order, a range overlaps an earlier one exactly when it starts before the
  // largest end seen so far; the range holding that end is one it overlaps.
  const MemoryRange* reach_any = nullptr;      // largest end among all earlier ranges
  const MemoryRange* reach_written = nullptr;  // largest end among earlier written ranges
  for (const MemoryRange& r : ranges) {
    const bool written = roles[r.role].written;
    if (written && reach_any != nullptr && r.begin < reach_any->end) {
      refuse(r, *reach_any, roles, indexed);
    }
    if (!written && reach_written != nullptr && r.begin < reach_written->end) {
      refuse(r, *reach_written, roles, indexed);
    }
    if (reach_any == nullptr || r.end > reach_any->end) reach_any = &r;
    if (written && (reach_written == nullptr || r.end > reach_written->end)) reach_written = &r;
  }
}

}  // namespace lift_ext
