// The vector int8 top-k kernel, written once over a lane-traits class V and instantiated by each
// ISA translation unit (int8_avx2.cpp, int8_avx512.cpp, int8_avx512vnni.cpp) with its own flags.
//
// Layout ("vertical"): a block of database rows is transposed into groups of kLanes rows; step t of
// a group holds dims [t*kPer, t*kPer + kPer) of each of its rows, kPer consecutive elements per
// 32-bit lane. A query's kPer elements of step t are one 32-bit broadcast, so one multiply-add
// instruction adds step t of kLanes dot products at once, and lane r of the accumulator ends as
// the dot product with row r: no horizontal reduction. A register tile of kQT queries x 2 groups
// reuses every database load kQT times and every query broadcast twice.
//
// V provides: kLanes, kPer, kQT, Elem (transposed database element), QElem (query element),
// kBias (true: Elem is the database byte XOR 0x80 and the sum gains 128 * sum(q), subtracted by
// starting the accumulator at -128 * sum(q)), to_elem(int8_t), Vec, zero(), set1(int32_t),
// load(const Elem*), bcast(const QElem*), madd(acc, db, q), gt_mask(Vec, int32_t),
// gt_mask_f(Vec scores_i32, const float* db_inv, float q_inv, float bar) (cosine scores vs bar),
// store(int32_t*, Vec), store_f(float*, Vec scores_i32, const float* db_inv, float q_inv).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "common/isa_namespace.h"
#include "common/topk.h"
#include "int8/int8_kernels.h"

namespace embkern::int8 {
inline namespace EMBKERN_ISA_NS {

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
template <class T>
std::unique_ptr<T[], AlignedFree> aligned_buffer(int64_t count) {
  const size_t bytes = (size_t(count) * sizeof(T) + 63) / 64 * 64;
  return std::unique_ptr<T[], AlignedFree>(static_cast<T*>(std::aligned_alloc(64, bytes ? bytes : 64)));
}

// The rare path: lanes of `mask` beat the query's bar; offered in increasing row order.
template <class T, int L>
__attribute__((noinline)) void offer_lanes(TopKHeap<T, true>& heap, const T* vals, uint32_t mask, int64_t first) {
  for (; mask; mask &= mask - 1) {
    const int lane = __builtin_ctz(mask);
    heap.push(vals[lane], first + lane);
  }
}

template <class V, bool Cos, class T>
void int8_topk_scan_vec(const int8_t* queries, int64_t nq, const int8_t* db, int64_t db_begin, int64_t db_end,
                        int64_t dim, const float* q_inv_norm, const float* db_inv_norm, Heaps<T> heaps) {
  using Elem = typename V::Elem;
  using QElem = typename V::QElem;
  using Vec = typename V::Vec;
  using Heap = TopKHeap<T, true>;
  constexpr int L = V::kLanes, P = V::kPer, QT = V::kQT;
  if (nq == 0 || db_end <= db_begin) return;
  const int64_t steps = (dim + P - 1) / P;
  const int64_t group_elems = steps * L * P;  // one group of L transposed rows
  // Block: about 32 KB of transposed rows (stays in L1 while a query chunk sweeps it), 2L..512 rows.
  int64_t block_rows = (32768 / int64_t(steps * P * sizeof(Elem))) / (2 * L) * (2 * L);
  block_rows = std::clamp<int64_t>(block_rows, 2 * L, 512);
  // Query chunk: about 256 KB of prepared queries (stays in L2 while the database streams by).
  int64_t chunk = (262144 / int64_t(steps * P * sizeof(QElem))) / QT * QT;
  chunk = std::max<int64_t>(chunk, QT);
  chunk = std::min<int64_t>(chunk, (nq + QT - 1) / QT * QT);

  auto blk = aligned_buffer<Elem>(block_rows / L * group_elems);
  auto qbuf = aligned_buffer<QElem>(chunk * steps * P);
  std::vector<int32_t> qbias(size_t(chunk), 0);
  std::vector<float> qinv(size_t(chunk), 0.f);
  auto dinv = aligned_buffer<float>(block_rows);
  std::vector<Heap> heap;
  heap.reserve(size_t(chunk));

  for (int64_t q0 = 0; q0 < nq; q0 += chunk) {
    const int64_t nqc = std::min(chunk, nq - q0);
    const int64_t nqc_pad = (nqc + QT - 1) / QT * QT;
    // Queries: padded with zero dims and zero rows (a zero query adds nothing).
    std::memset(qbuf.get(), 0, size_t(nqc_pad * steps * P) * sizeof(QElem));
    for (int64_t i = 0; i < nqc; ++i) {
      const int8_t* q = queries + (q0 + i) * dim;
      QElem* dst = qbuf.get() + i * steps * P;
      int32_t sum = 0;
      for (int64_t d = 0; d < dim; ++d) {
        dst[d] = QElem(q[d]);
        sum += q[d];
      }
      qbias[size_t(i)] = V::kBias ? -128 * sum : 0;
      if constexpr (Cos) qinv[size_t(i)] = q_inv_norm[q0 + i];
    }
    for (int64_t i = nqc; i < nqc_pad; ++i) qbias[size_t(i)] = 0;
    heap.clear();
    for (int64_t i = 0; i < nqc; ++i)
      heap.emplace_back(heaps.vals + (q0 + i) * heaps.k, heaps.idx + (q0 + i) * heaps.k, heaps.k, heaps.size[q0 + i]);

    for (int64_t b = db_begin; b < db_end; b += block_rows) {
      const int64_t rows = std::min(block_rows, db_end - b);
      const int64_t groups = (rows + 2 * L - 1) / (2 * L) * 2;  // even: tiles take two groups
      // Transpose; rows past the end are zero (their lanes are masked out below). A full group
      // may take the ISA's vector transpose for its leading steps (V::transpose_group).
      const Elem zero_elem = V::to_elem(0);
      const int64_t full = dim / P;
      for (int64_t g = 0; g < groups; ++g) {
        Elem* gdst = blk.get() + g * group_elems;
        const int64_t r0 = g * L;
        int64_t done = 0;
        if constexpr (V::kVectorTranspose)
          if (r0 + L <= rows) done = V::transpose_group(gdst, db + (b + r0) * dim, dim);
        for (int64_t lane = 0; lane < L; ++lane) {
          Elem* dst = gdst + lane * P;
          if (r0 + lane >= rows) {
            for (int64_t t = 0; t < steps; ++t)
              for (int p = 0; p < P; ++p) dst[t * L * P + p] = zero_elem;
            continue;
          }
          const int8_t* row = db + (b + r0 + lane) * dim;
          for (int64_t t = done; t < full; ++t) V::put_step(dst + t * L * P, row + t * P);
          for (int64_t t = std::max(done, full); t < steps; ++t)
            for (int p = 0; p < P; ++p) {
              const int64_t d = t * P + p;
              dst[t * L * P + p] = V::to_elem(d < dim ? row[d] : int8_t(0));
            }
        }
      }
      if constexpr (Cos) {
        for (int64_t r = 0; r < rows; ++r) dinv[r] = db_inv_norm[b + r];
        for (int64_t r = rows; r < groups * L; ++r) dinv[r] = 0.f;
      }

      for (int64_t qt = 0; qt < nqc_pad; qt += QT) {
        const QElem* qp = qbuf.get() + qt * steps * P;
        for (int64_t g = 0; g < groups; g += 2) {
          const Elem* b0 = blk.get() + g * group_elems;
          const Elem* b1 = b0 + group_elems;
          Vec acc0[QT], acc1[QT];
#pragma GCC unroll 16
          for (int i = 0; i < QT; ++i) acc0[i] = acc1[i] = V::set1(qbias[size_t(qt + i)]);
          for (int64_t t = 0; t < steps; ++t) {
            const Vec d0 = V::load(b0 + t * L * P), d1 = V::load(b1 + t * L * P);
#pragma GCC unroll 16
            for (int i = 0; i < QT; ++i) {
              const Vec qv = V::bcast(qp + i * steps * P + t * P);
              acc0[i] = V::madd(acc0[i], d0, qv);
              acc1[i] = V::madd(acc1[i], d1, qv);
            }
          }
          // Spill once per tile (keeps the accumulators in registers in the loop above, which
          // indexes them only with unrolled constants).
          alignas(64) int32_t res[QT][2][L];
#pragma GCC unroll 16
          for (int i = 0; i < QT; ++i) {
            V::store(res[i][0], acc0[i]);
            V::store(res[i][1], acc1[i]);
          }
          // Epilogue: one compare per L pairs against the query's bar; only winners reach the heap.
          for (int i = 0; i < QT && qt + i < nqc; ++i) {
            Heap& h = heap[size_t(qt + i)];
            for (int half = 0; half < 2; ++half) {
              const int64_t r0 = (g + half) * L;
              if (r0 >= rows) break;
              const uint32_t valid = rows - r0 >= L ? uint32_t((1ull << L) - 1) : uint32_t((1u << (rows - r0)) - 1);
              const Vec a = V::load_i32(res[i][half]);
              alignas(64) T vals[L];
              uint32_t m;
              if constexpr (Cos) {
                m = V::gt_mask_f(a, dinv.get() + r0, qinv[size_t(qt + i)], h.bar()) & valid;
                if (__builtin_expect(m != 0, 0)) V::store_f(vals, a, dinv.get() + r0, qinv[size_t(qt + i)]);
              } else {
                m = V::gt_mask(a, h.bar()) & valid;
                if (__builtin_expect(m != 0, 0)) V::store(vals, a);
              }
              if (__builtin_expect(m != 0, 0)) offer_lanes<T, L>(h, vals, m, b + r0);
            }
          }
        }
      }
    }
    for (int64_t i = 0; i < nqc; ++i) heaps.size[q0 + i] = heap[size_t(i)].size();
  }
}

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::int8
