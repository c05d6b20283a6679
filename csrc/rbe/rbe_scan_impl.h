// The vector SDC kernels, written once over a lane-traits class V and instantiated by each ISA
// translation unit with its own flags. V provides (int64 lanes):
//   kLanes, Vec, load(const uint64_t*), load_i64(const int64_t*), set1(uint64_t), and_, add, sub,
//   Acc { add(Vec); Vec finish(); }   per-lane popcount sums,
//   FVec (kLanes floats), to_float(Vec) (lanes are below 2^31 in magnitude), fmul, fload, fset1,
//   gt_mask(FVec, FVec bar) -> lane bitmask of v > bar, fstore.
//
// Bit-plane AND-popcount: a group of kLanes database rows costs, per plane word, B loads and B*B
// AND + popcount + add; the 2B-1 accumulators (one per weight 2^(2u-s), s = i + j) are combined
// by Horner (doubling), so no shifts. The database block is transposed once and scanned by a chunk
// of queries; query words come as broadcast memory operands.
#pragma once
#include <algorithm>

#include "rbe/rbe_common.h"

namespace embkern::rbe {
inline namespace EMBKERN_ISA_NS {

template <class V, int B, int W>
inline __attribute__((always_inline)) typename V::Vec group_dot(const uint64_t* col, const uint64_t* qrow,
                                                                int64_t words_rt) {
  using Vec = typename V::Vec;
  const int64_t words = W > 0 ? W : words_rt;
  typename V::Acc acc[2 * B - 1];
  for (int64_t w = 0; w < words; ++w) {
#pragma GCC unroll 4
    for (int j = 0; j < B; ++j) {
      const Vec d = V::load(col + (j * words + w) * kDbBlock);
#pragma GCC unroll 4
      for (int i = 0; i < B; ++i) acc[i + j].add(V::and_(d, V::set1(qrow[i * words + w])));
    }
  }
  Vec dot = acc[0].finish();
#pragma GCC unroll 8
  for (int s = 1; s < 2 * B - 1; ++s) dot = V::add(V::add(dot, dot), acc[s].finish());
  return dot;
}

// Float scores of group g of a block: float(4 dot - e - kq) * scale [* inv].
template <class V, int B, int W, bool HasInv>
inline __attribute__((always_inline)) typename V::FVec group_scores(const DbBlock& blk, int64_t g,
                                                                    const uint64_t* qrow, int64_t words,
                                                                    const typename V::Vec& kq,
                                                                    const typename V::FVec& scale) {
  constexpr int L = V::kLanes;
  typename V::Vec dot = group_dot<V, B, W>(blk.data.get() + g * L, qrow, words);
  dot = V::add(dot, dot);
  dot = V::add(dot, dot);
  const typename V::Vec s = V::sub(V::sub(dot, V::load_i64(blk.e + g * L)), kq);
  typename V::FVec f = V::fmul(V::to_float(s), scale);
  if constexpr (HasInv) f = V::fmul(f, V::fload(blk.inv + g * L));
  return f;
}

// Calls body.template operator()<B, W, HasInv>() with compile-time plane count, word count (0 =
// runtime loop) and inverse-norm flag.
template <class F>
void dispatch_shape(const SdcShape& s, F&& body) {
  const int64_t words = sdc_plane_words(s.dim);
  auto with_w = [&]<int B, bool H>() {
    switch (words) {
      case 1: return body.template operator()<B, 1, H>();
      case 2: return body.template operator()<B, 2, H>();
      case 4: return body.template operator()<B, 4, H>();
      case 6: return body.template operator()<B, 6, H>();
      case 8: return body.template operator()<B, 8, H>();
      default: return body.template operator()<B, 0, H>();
    }
  };
  auto with_b = [&]<bool H>() {
    switch (s.bits) {
      case 1: return with_w.template operator()<1, H>();
      case 2: return with_w.template operator()<2, H>();
      case 3: return with_w.template operator()<3, H>();
      default: return with_w.template operator()<4, H>();
    }
  };
  if (s.db_inv_norm) return with_b.template operator()<true>();
  return with_b.template operator()<false>();
}

// Walks (query chunk) x (database block) x (query); per_query(q, blk, first_row, rows) scans a block.
template <class PerQuery>
void scan_blocks(const QueryPlanes& qp, int64_t nq, const uint8_t* db, int64_t db_begin, int64_t db_end,
                 const SdcShape& s, PerQuery&& per_query) {
  DbBlock blk(s);
  const int64_t qchunk = query_chunk_rows(s.bits, qp.words);
  for (int64_t q0 = 0; q0 < nq; q0 += qchunk) {
    const int64_t q1 = std::min(nq, q0 + qchunk);
    for (int64_t b = db_begin; b < db_end; b += kDbBlock) {
      const int64_t rows = std::min<int64_t>(kDbBlock, db_end - b);
      blk.fill(db, b, rows, s);
      for (int64_t q = q0; q < q1; ++q) per_query(q, blk, b, rows);
    }
  }
}

// The rare path: lanes of `mask` beat the bar; offers them to the heap and returns the new bar.
template <class V>
__attribute__((noinline)) typename V::FVec offer_group(SdcHeap& heap, typename V::FVec f, uint32_t mask,
                                                       int64_t first) {
  alignas(64) float fv[V::kLanes];
  V::fstore(fv, f);
  for (; mask; mask &= mask - 1) {
    const int lane = __builtin_ctz(mask);
    heap.push(fv[lane], first + lane);
  }
  return V::fset1(heap.bar());
}

template <class V>
void sdc_topk_scan_vec(EMBKERN_RBE_SCAN_ARGS) {
  constexpr int L = V::kLanes;
  if (nq == 0 || db_end <= db_begin) return;
  const QueryPlanes qp(queries, nq, shape);
  const typename V::FVec scale = V::fset1(sdc_scale(shape.bits));
  dispatch_shape(shape, [&]<int B, int W, bool H>() {
    scan_blocks(qp, nq, db, db_begin, db_end, shape, [&](int64_t q, const DbBlock& blk, int64_t first, int64_t rows) {
      SdcHeap heap(heaps.val + q * heaps.k, heaps.idx + q * heaps.k, heaps.k, heaps.size[q]);
      const uint64_t* qrow = qp.row(q, B);
      const typename V::Vec kq = V::set1(uint64_t(qp.kq[q]));
      typename V::FVec bar = V::fset1(heap.bar());
      const int64_t groups = (rows + L - 1) / L;
      for (int64_t g = 0; g < groups; ++g) {
        const typename V::FVec f = group_scores<V, B, W, H>(blk, g, qrow, qp.words, kq, scale);
        uint32_t m = V::gt_mask(f, bar);
        if (g * L + L > rows) m &= (1u << (rows - g * L)) - 1;
        if (__builtin_expect(m != 0, 0)) bar = offer_group<V>(heap, f, m, first + g * L);
      }
      heaps.size[q] = heap.size();
    });
  });
}

template <class V>
void sdc_scores_vec(EMBKERN_RBE_SCORES_ARGS) {
  constexpr int L = V::kLanes;
  if (nq == 0 || db_end <= db_begin) return;
  const QueryPlanes qp(queries, nq, shape);
  const typename V::FVec scale = V::fset1(sdc_scale(shape.bits));
  dispatch_shape(shape, [&]<int B, int W, bool H>() {
    scan_blocks(qp, nq, db, db_begin, db_end, shape, [&](int64_t q, const DbBlock& blk, int64_t first, int64_t rows) {
      const uint64_t* qrow = qp.row(q, B);
      const typename V::Vec kq = V::set1(uint64_t(qp.kq[q]));
      float* o = out + q * out_stride + (first - db_begin);
      for (int64_t g = 0; g * L < rows; ++g) {
        alignas(64) float fv[L];
        V::fstore(fv, group_scores<V, B, W, H>(blk, g, qrow, qp.words, kq, scale));
        const int64_t n = std::min<int64_t>(L, rows - g * L);
        for (int64_t i = 0; i < n; ++i) o[g * L + i] = fv[i];
      }
    });
  });
}

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::rbe
