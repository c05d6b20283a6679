// rbe family kernels: recurrent-binarization (BEBR) codes and symmetric distance calculation (SDC)
// over raw pointers. Framework-free.
//
// Code layout (DESIGN 3.4): each vector has `dim` levels L in [0, 2^bits), bits = u + 1 in 1..4.
// The levels are written dimension-major as one bit stream, each level most significant bit first,
// and the stream is packed into bytes most significant bit first (numpy.packbits order); a row has
// ceil(dim * bits / 8) bytes and its padding bits are 0. bits = 1 is exactly pack_bits(x > 0).
// The decoded value of a level is v = (2L - c) / 2^u with c = 2^bits - 1.
//
// SDC: <q, d> = [4 sum Lq*Ld - 2c (sum Lq + sum Ld) + dim c^2] / 4^u  (exact integer S, then / 4^u).
// sum Lq*Ld = sum_{i,j} 2^(2u-i-j) popcount(Q_i AND D_j) over bit planes i, j (0 = most significant).
// Scores are float(S) * 2^-2u, times db_inv_norm[j] in float32 when given: every ISA (and CUDA)
// performs exactly these roundings, so results are bitwise identical.
#pragma once
#include <cstdint>

namespace embkern::rbe {

struct SdcShape {
  int64_t dim;
  int bits;             // 1..4
  int64_t code_bytes;   // ceil(dim * bits / 8)
  const float* db_inv_norm;  // nullptr, or one per database row (indexed by the global row)
};

inline int64_t sdc_code_bytes(int64_t dim, int bits) { return (dim * bits + 7) / 8; }
// 64-bit words per bit plane: word w holds (a fixed permutation of) dimensions 64w .. 64w+63.
inline int64_t sdc_plane_words(int64_t dim) { return (dim + 63) / 64; }

// Per-query bounded heaps (common/topk.h), larger score first, ties to the lower index.
struct SdcHeaps {
  float* val;
  int64_t* idx;
  int64_t* size;
  int64_t k;
};

// Offers database rows [db_begin, db_end), in increasing order, to each query's heap; every index
// already kept is < db_begin.
#define EMBKERN_RBE_SCAN_ARGS                                                                       \
  const uint8_t *queries, int64_t nq, const uint8_t *db, int64_t db_begin, int64_t db_end, const SdcShape &shape, \
      SdcHeaps heaps
void sdc_topk_scan_scalar(EMBKERN_RBE_SCAN_ARGS);
void sdc_topk_scan_avx2(EMBKERN_RBE_SCAN_ARGS);
void sdc_topk_scan_avx512(EMBKERN_RBE_SCAN_ARGS);         // popcount by VPSHUFB nibble lookups
void sdc_topk_scan_avx512vpopcnt(EMBKERN_RBE_SCAN_ARGS);  // VPOPCNTQ
// bits == 2 and dim <= kVbmiMaxDim only: VPERMB lookups on 3-dimension fields (rbe_avx512vbmi.cpp)
void sdc_topk_scan_avx512vbmi(EMBKERN_RBE_SCAN_ARGS);
constexpr int64_t kVbmiMaxDim = 7200;  // 16-bit row sums: 27 * ceil(dim / 3) < 2^16
// bits == 2 and nq <= kVnniMaxQueries only: rows read in place, VPDPBUSD on unpacked levels
// (rbe_avx512vnni.cpp); for a few queries the blocked kernels' repacking would dominate.
void sdc_topk_scan_avx512vnni(EMBKERN_RBE_SCAN_ARGS);
constexpr int64_t kVnniMaxQueries = 4;

// out[q * out_stride + (j - db_begin)] = score of query q and row j, for j in [db_begin, db_end).
#define EMBKERN_RBE_SCORES_ARGS                                                                     \
  const uint8_t *queries, int64_t nq, const uint8_t *db, int64_t db_begin, int64_t db_end, const SdcShape &shape, \
      float *out, int64_t out_stride
void sdc_scores_scalar(EMBKERN_RBE_SCORES_ARGS);
void sdc_scores_avx2(EMBKERN_RBE_SCORES_ARGS);
void sdc_scores_avx512(EMBKERN_RBE_SCORES_ARGS);
void sdc_scores_avx512vpopcnt(EMBKERN_RBE_SCORES_ARGS);
void sdc_scores_avx512vbmi(EMBKERN_RBE_SCORES_ARGS);
void sdc_scores_avx512vnni(EMBKERN_RBE_SCORES_ARGS);

// ---- encoder epilogue and converters (portable; memory bound) --------------------------------------

// out = x - h / max(||h||, 1e-12) row by row (the residual of BEBR's recurrence), float32 [n, d].
void rbe_residual_f32(const float* x, const float* h, int64_t n, int64_t d, float* out);
// One step of the recurrence on [n, m]: bit = pre > 0; levels = 2 * levels_in + bit (levels_in may be
// nullptr for step 0); b = (2 * levels - (2^(step+1) - 1)) / 2^step, the running decoded code.
void rbe_sign_step_f32(const float* pre, const uint8_t* levels_in, int64_t n, int64_t m, int step, uint8_t* levels_out,
                       float* b);
// Packs levels [n, dim] (each < 2^bits) into codes [n, sdc_code_bytes] and writes 1 / ||v|| of the
// decoded vector (exact integer sum of squares, then one double sqrt); inv_norm may be nullptr.
void rbe_pack_levels(const uint8_t* levels, int64_t n, int64_t dim, int bits, uint8_t* codes, float* inv_norm);
// Inverse of rbe_pack_levels: levels [n, dim].
void rbe_unpack_levels(const uint8_t* codes, int64_t n, int64_t dim, int bits, uint8_t* levels);

}  // namespace embkern::rbe
