// cur family kernels: fused score + top-k, scores = C[B, r] @ E[r, N], over raw pointers.
// Framework-free; each ISA variant lives in its own translation unit (cur_ref.cpp is the scalar twin).
//
// Numerics (identical on every ISA, so every path returns the same bits): each score is
//   acc = 0; for j in 0..r-1: acc = fma(C[b, j], e(j, n), acc);   (int8: acc = acc * scale[n])
// where e(j, n) is E's element converted exactly to float32 (bfloat16 by a 16-bit shift, int8 by
// integer -> float). The vector kernels keep that order (they vectorize over columns and queries).
#pragma once
#include <cstdint>

namespace embkern::cur {

// Storage type of E.
enum EType : int { kF32 = 0, kBF16 = 1, kI8 = 2 };

// Per-query bounded heaps (common/topk.h, larger is better): query q owns vals[q*k .. q*k+k),
// ids[...] and size[q] elements kept so far.
struct ScoreHeaps {
  float* vals;
  int64_t* ids;
  int64_t* size;
  int64_t k;
};

// Excluded ids of query q: ids[offsets[q] .. offsets[q+1]), sorted ascending, unique, in [0, N).
// offsets == nullptr: nothing excluded.
struct Exclusions {
  const int64_t* ids;
  const int64_t* offsets;
};

// Offers every column n in [col_begin, col_end), in increasing order, with score(q, n) to query q's
// heap for q < nq, skipping excluded ids and NaN scores. E is row-major with row stride `ld`
// (elements); `scales` (float32[N]) is used only for kI8. Precondition: every id already kept is
// < col_begin (equal scores never displace a kept element: the filter uses a strict bar).
#define EMBKERN_CUR_SCAN_ARGS                                                                        \
  const float *C, int64_t nq, int64_t r, const void *E, int etype, const float *scales, int64_t ld, \
      int64_t col_begin, int64_t col_end, Exclusions ex, ScoreHeaps heaps
void score_topk_scan_scalar(EMBKERN_CUR_SCAN_ARGS);
void score_topk_scan_avx2(EMBKERN_CUR_SCAN_ARGS);
void score_topk_scan_avx512(EMBKERN_CUR_SCAN_ARGS);
// Many queries: VPDPBUSD pre-filter with an error bound + exact rescoring; same results (cur_avx512vnni.cpp).
void score_topk_scan_avx512vnni(EMBKERN_CUR_SCAN_ARGS);

}  // namespace embkern::cur
