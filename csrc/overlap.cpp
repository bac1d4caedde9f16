#include "lift_ext/overlap.h"

#include <algorithm>
#include <ostream>

#include <c10/util/Exception.h>

namespace lift_ext {
namespace {

// A range in the sort: its end with bit 0 set when the range is written (every end is a
// multiple of its element size, 2 or 4 bytes, so bit 0 is free).
struct Span {
  uintptr_t begin;
  uintptr_t end_written;
  uintptr_t end() const { return end_written & ~uintptr_t{1}; }
  bool written() const { return (end_written & 1) != 0; }
};

// A lambda, not a function: the sorts inline it (through a function pointer every comparison
// would be an indirect call).
constexpr auto by_begin = [](const Span& a, const Span& b) { return a.begin < b.begin; };

// Sorts one role's spans by address, in O(n) when they are nearly in order either way (the
// usual case: tensors allocated one after another, now and then in a reused hole): the spans
// that continue the ascending order stay where they are, the few others are sorted apart and
// merged back in; O(n log n) at worst.
void sort_run(Span* first, Span* last, std::vector<Span>& rest) {
  const auto n = last - first;
  std::ptrdiff_t descents = 0;
  for (Span* p = first + 1; p < last; ++p) descents += p->begin < (p - 1)->begin;
  if (descents == 0) return;
  if (2 * descents > n) std::reverse(first, last);
  rest.clear();
  Span* kept = first;
  for (Span* p = first; p != last; ++p) {
    if (kept == first || p->begin >= (kept - 1)->begin) {
      *kept++ = *p;
    } else {
      rest.push_back(*p);
    }
  }
  std::sort(rest.begin(), rest.end(), by_begin);
  // Merge from the back: the kept spans sit at the front, the merged tail fills from the end.
  Span* out = last;
  Span* k = kept;
  for (auto r = rest.end(); r != rest.begin();) {
    if (k != first && (k - 1)->begin > (r - 1)->begin) {
      *--out = *--k;
    } else {
      *--out = *--r;
    }
  }
}

// Position in `ranges` of the range [begin, end), other than `skip`.
size_t find_range(const std::vector<MemoryRange>& ranges, const Span& s, size_t skip) {
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (i != skip && ranges[i].begin == s.begin && ranges[i].end == s.end()) return i;
  }
  return ranges.size();
}

struct RangeName {
  size_t position;
  c10::ArrayRef<MemoryRole> roles;
  c10::ArrayRef<uint32_t> list_index;
  bool indexed;
};

std::ostream& operator<<(std::ostream& os, const RangeName& n) {
  size_t k = n.position;
  size_t r = 0;
  while (k >= n.roles[r].count) k -= n.roles[r++].count;
  os << n.roles[r].name;
  if (n.indexed) os << "[" << (n.list_index.empty() ? k : size_t{n.list_index[k]}) << "]";
  return os;
}

[[noreturn]] void refuse(const std::vector<MemoryRange>& ranges, const Span& a, const Span& b,
                         c10::ArrayRef<MemoryRole> roles, c10::ArrayRef<uint32_t> list_index,
                         bool indexed) {
  const size_t i = find_range(ranges, a, ranges.size());
  const size_t j = find_range(ranges, b, i);
  TORCH_CHECK(false, RangeName{std::min(i, j), roles, list_index, indexed}, " and ",
              RangeName{std::max(i, j), roles, list_index, indexed},
              " share memory (the same tensor twice, or views of one buffer): a tensor the "
              "step writes must not overlap any other tensor of the call");
}

}  // namespace

void check_disjoint(const std::vector<MemoryRange>& ranges, c10::ArrayRef<MemoryRole> roles,
                    c10::ArrayRef<uint32_t> list_index, bool indexed) {
  std::vector<Span> spans(ranges.size());
  std::vector<Span> rest;
  std::vector<std::pair<size_t, size_t>> runs;  // [first, last) of each role's run in `spans`
  size_t at = 0;
  for (const MemoryRole& role : roles) {
    for (size_t k = at; k < at + role.count; ++k) {
      spans[k] = Span{ranges[k].begin, ranges[k].end | uintptr_t{role.written}};
    }
    if (role.count > 0) {
      sort_run(spans.data() + at, spans.data() + at + role.count, rest);
      runs.emplace_back(at, at + role.count);
    }
    at += role.count;
  }
  // One address order: the runs one after the other when their spans do not interleave (the
  // usual case), else merged.
  std::sort(runs.begin(), runs.end(), [&](const auto& a, const auto& b) {
    return spans[a.first].begin < spans[b.first].begin;
  });
  bool interleaved = false;
  for (size_t r = 1; r < runs.size(); ++r) {
    interleaved |= spans[runs[r - 1].second - 1].begin > spans[runs[r].first].begin;
  }
  if (interleaved) {
    std::vector<Span> merged, order;
    for (const auto& [first, last] : runs) {
      merged.resize(order.size() + (last - first));
      std::merge(order.begin(), order.end(), spans.begin() + static_cast<std::ptrdiff_t>(first),
                 spans.begin() + static_cast<std::ptrdiff_t>(last), merged.begin(), by_begin);
      order.swap(merged);
    }
    spans.swap(order);
    runs.assign(1, {0, spans.size()});
  }
  // In address order, a range overlaps an earlier one exactly when it starts before the
  // largest end seen so far; the range holding that end is one it overlaps.
  const Span* reach_any = nullptr;      // largest end among all earlier ranges
  const Span* reach_written = nullptr;  // largest end among earlier written ranges
  for (const auto& [first, last] : runs) {
    for (size_t k = first; k < last; ++k) {
      const Span& s = spans[k];
      if (s.written() && reach_any != nullptr && s.begin < reach_any->end()) {
        refuse(ranges, s, *reach_any, roles, list_index, indexed);
      }
      if (!s.written() && reach_written != nullptr && s.begin < reach_written->end()) {
        refuse(ranges, s, *reach_written, roles, list_index, indexed);
      }
      if (reach_any == nullptr || s.end() > reach_any->end()) reach_any = &s;
      if (s.written() && (reach_written == nullptr || s.end() > reach_written->end())) {
        reach_written = &s;
      }
    }
  }
}

void check_tensors_disjoint(std::initializer_list<NamedTensor> tensors) {
  std::vector<MemoryRange> ranges;
  std::vector<MemoryRole> roles;
  ranges.reserve(tensors.size());
  roles.reserve(tensors.size());
  for (const NamedTensor& t : tensors) {
    const bool has_bytes = t.tensor->defined() && t.tensor->numel() > 0;
    roles.push_back(MemoryRole{t.name, t.written, has_bytes ? size_t{1} : size_t{0}});
    if (has_bytes) {
      const auto begin = reinterpret_cast<uintptr_t>(t.tensor->data_ptr());
      ranges.push_back(MemoryRange{begin, begin + static_cast<uintptr_t>(t.tensor->nbytes())});
    }
  }
  check_disjoint(ranges, roles, {}, false);
}

}  // namespace lift_ext
