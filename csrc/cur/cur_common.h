// Helpers shared by the cur kernels of every ISA (compiled per ISA; see common/isa_namespace.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/isa_namespace.h"
#include "common/topk.h"
#include "cur/cur_kernels.h"

namespace embkern::cur {
inline namespace EMBKERN_ISA_NS {

using ScoreHeap = TopKHeap<float, /*LargerIsBetter=*/true>;

// Element (j, n) of E as float32, exactly.
inline float e_value(const void* E, int etype, int64_t idx) {
  switch (etype) {
    case kBF16: {
      const uint32_t bits = uint32_t(static_cast<const uint16_t*>(E)[idx]) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    case kI8: return float(static_cast<const int8_t*>(E)[idx]);
    default: return static_cast<const float*>(E)[idx];
  }
}

inline bool is_excluded(const Exclusions& ex, int64_t q, int64_t id) {
  if (ex.offsets == nullptr) return false;
  const int64_t* b = ex.ids + ex.offsets[q];
  const int64_t* e = ex.ids + ex.offsets[q + 1];
  return b != e && std::binary_search(b, e, id);
}

// Per-query filter state for the vector kernels: the heap's bar and whether the heap is full.
// While not full every non-NaN score is offered; once full only scores above the bar.
struct QueryBars {
  float* bar;
  uint8_t* full;
};

// Offers the lanes of `mask` (scores vals[lane], ids col + lane, increasing) to query q's heap.
inline void offer_lanes(const ScoreHeaps& heaps, const Exclusions& ex, QueryBars qb, int64_t q, const float* vals,
                        int64_t col, uint32_t mask) {
  ScoreHeap heap(heaps.vals + q * heaps.k, heaps.ids + q * heaps.k, heaps.k, heaps.size[q]);
  while (mask) {
    const int lane = __builtin_ctz(mask);
    mask &= mask - 1;
    const int64_t id = col + lane;
    if (is_excluded(ex, q, id)) continue;
    heap.push(vals[lane], id);
  }
  heaps.size[q] = heap.size();
  if (heap.full()) {
    qb.full[q] = 1;
    qb.bar[q] = heap.bar();
  }
}

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::cur
