// Helpers shared by the cur kernels of every ISA (compiled per ISA; see common/isa_namespace.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

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

// float32 -> the nearest bfloat16 (ties to even), returned as float32 (finite inputs).
inline float round_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// bfloat16 E uses VDPBF16PS numerics on every path (cur_kernels.h): C rounded to bfloat16, rows
// taken in pairs with the odd row first, a zero row padding an odd r, denormals flushed (DAZ/FTZ).
// Slot s of the padded order holds row s ^ 1; these are the rounded, reordered rows of C.
inline int64_t bf16_slots(int64_t r) { return (r + 1) / 2 * 2; }
inline std::vector<float> bf16_slot_queries(const float* C, int64_t nq, int64_t r) {
  const int64_t rs = bf16_slots(r);
  std::vector<float> out(size_t(nq * rs), 0.0f);
  for (int64_t q = 0; q < nq; ++q)
    for (int64_t s = 0; s < rs; ++s)
      if ((s ^ 1) < r) out[q * rs + s] = round_to_bf16(C[q * r + (s ^ 1)]);
  return out;
}

// Sets MXCSR's flush-to-zero and denormals-are-zero bits for its lifetime (this thread only), so
// plain FMAs reproduce VDPBF16PS, which always flushes.
class FlushDenormals {
 public:
  FlushDenormals() {
#if defined(__x86_64__) || defined(_M_X64)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040u);
#endif
  }
  ~FlushDenormals() {
#if defined(__x86_64__) || defined(_M_X64)
    _mm_setcsr(saved_);
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned saved_ = 0;
};

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
