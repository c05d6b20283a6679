// The vector Hamming kernels, written once over a small lane-traits class V and instantiated by
// each ISA translation unit (bits_avx2.cpp, bits_avx512.cpp, bits_avx512vpopcnt.cpp) with its
// own flags. V provides:
//   kLanes, Vec, load(const uint64_t*), set1(uint64_t), xor_(Vec, Vec),
//   Acc { add(Vec); Vec finish(); }          per-lane popcount sum over words,
//   lt_mask(Vec d, Vec bar) -> lane bitmask of d < bar,  to_array(Vec, uint64_t*).
//
// Layout: a block of kDbBlock database rows is transposed word-major, so one load brings word w of
// kLanes rows; each query's words are broadcast, so a group of kLanes rows costs `words` loads,
// XORs and popcounts. Top-k: one compare per group against the query's bar; only rows that beat
// it reach the heap (FAISS-style). The block is scanned by a chunk of queries before moving on.
#pragma once
#include <algorithm>

#include "bits/bits_common.h"

namespace embkern::bits {
inline namespace EMBKERN_ISA_NS {

template <class V, int W>
inline __attribute__((always_inline)) typename V::Vec group_distance(const uint64_t* col, const typename V::Vec* qv,
                                                                     const uint64_t* qw, int64_t words) {
  typename V::Acc acc;
  if constexpr (W > 0) {
    for (int w = 0; w < W; ++w) acc.add(V::xor_(V::load(col + w * kDbBlock), qv[w]));
  } else {
    for (int64_t w = 0; w < words; ++w) acc.add(V::xor_(V::load(col + w * kDbBlock), V::set1(qw[w])));
  }
  return acc.finish();
}

// Walks (query chunk) x (database block) x (query) and calls
// `per_query(q, block, first_row, rows, qv, qrow, words)` for each query and transposed block; the
// callee loops over the block's groups itself, so that loop keeps its state in registers.
template <class V, int W, class PerQuery>
void scan_blocks(const uint8_t* queries, int64_t nq, const uint8_t* db, int64_t db_begin, int64_t db_end,
                 int64_t code_bytes, PerQuery&& per_query) {
  using Vec = typename V::Vec;
  const int64_t words = words_per_code(code_bytes);
  auto qw = codes_as_words(queries, nq, code_bytes);
  std::unique_ptr<uint64_t[]> block(new uint64_t[size_t(words * kDbBlock)]);
  const int64_t qchunk = query_chunk_rows(words);
  for (int64_t q0 = 0; q0 < nq; q0 += qchunk) {
    const int64_t q1 = std::min(nq, q0 + qchunk);
    for (int64_t b = db_begin; b < db_end; b += kDbBlock) {
      const int64_t rows = std::min<int64_t>(kDbBlock, db_end - b);
      transpose_block(db, b, rows, code_bytes, kDbBlock, block.get());
      for (int64_t q = q0; q < q1; ++q) {
        const uint64_t* qrow = &qw[q * words];
        Vec qv[W > 0 ? W : 1];
        if constexpr (W > 0)
          for (int w = 0; w < W; ++w) qv[w] = V::set1(qrow[w]);
        per_query(q, static_cast<const uint64_t*>(block.get()), b, rows, static_cast<const Vec*>(qv), qrow, words);
      }
    }
  }
}

// Calls body.template operator()<W>() with W the compile-time word count for common widths
// (fully unrolled, query words in registers) or 0 (runtime loop) for the rest.
template <class F>
void dispatch_words(int64_t words, F&& body) {
  switch (words) {
    case 1: return body.template operator()<1>();
    case 2: return body.template operator()<2>();
    case 3: return body.template operator()<3>();
    case 4: return body.template operator()<4>();
    case 6: return body.template operator()<6>();
    case 8: return body.template operator()<8>();
    case 12: return body.template operator()<12>();
    case 16: return body.template operator()<16>();
    default: return body.template operator()<0>();
  }
}

// The rare path: lanes of `mask` beat the bar; offers them to the heap and returns the new bar.
template <class V>
__attribute__((noinline)) typename V::Vec offer_group(HammingHeap& heap, typename V::Vec d, uint32_t mask,
                                                      int64_t first) {
  alignas(64) uint64_t dv[V::kLanes];
  V::to_array(d, dv);
  for (; mask; mask &= mask - 1) {
    const int lane = __builtin_ctz(mask);
    heap.push(int32_t(dv[lane]), first + lane);
  }
  return V::set1(uint64_t(heap.bar()));
}

template <class V>
void hamming_topk_scan_vec(EMBKERN_BITS_SCAN_ARGS) {
  using Vec = typename V::Vec;
  constexpr int L = V::kLanes;
  dispatch_words(words_per_code(code_bytes), [&]<int W>() {
    scan_blocks<V, W>(queries, nq, db, db_begin, db_end, code_bytes,
                      [&](int64_t q, const uint64_t* block, int64_t first, int64_t rows, const Vec* qv,
                          const uint64_t* qrow, int64_t words) {
                        HammingHeap heap(heaps.dist + q * heaps.k, heaps.idx + q * heaps.k, heaps.k, heaps.size[q]);
                        Vec bar = V::set1(uint64_t(heap.bar()));
                        const int64_t full = rows / L;
                        for (int64_t g = 0; g < full; ++g) {
                          const Vec d = group_distance<V, W>(block + g * L, qv, qrow, words);
                          const uint32_t m = V::lt_mask(d, bar);
                          if (__builtin_expect(m != 0, 0)) bar = offer_group<V>(heap, d, m, first + g * L);
                        }
                        if (const int64_t tail = rows % L) {
                          const Vec d = group_distance<V, W>(block + full * L, qv, qrow, words);
                          const uint32_t m = V::lt_mask(d, bar) & ((1u << tail) - 1);
                          if (m) offer_group<V>(heap, d, m, first + full * L);
                        }
                        heaps.size[q] = heap.size();
                      });
  });
}

template <class V>
void hamming_distance_vec(EMBKERN_BITS_DIST_ARGS) {
  using Vec = typename V::Vec;
  constexpr int L = V::kLanes;
  dispatch_words(words_per_code(code_bytes), [&]<int W>() {
    scan_blocks<V, W>(queries, nq, db, 0, nb, code_bytes,
                      [&](int64_t q, const uint64_t* block, int64_t first, int64_t rows, const Vec* qv,
                          const uint64_t* qrow, int64_t words) {
                        int32_t* o = out + q * out_stride + first;
                        for (int64_t g = 0; g * L < rows; ++g) {
                          alignas(64) uint64_t dv[L];
                          V::to_array(group_distance<V, W>(block + g * L, qv, qrow, words), dv);
                          const int64_t n = std::min<int64_t>(L, rows - g * L);
                          for (int64_t i = 0; i < n; ++i) o[g * L + i] = int32_t(dv[i]);
                        }
                      });
  });
}

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::bits
