// bits family kernels: bit packing and Hamming search over raw pointers. Framework-free.
//
// Codes are row-major uint8 with `code_bytes` bytes per row, any width. Bit order follows
// numpy.packbits: dimension 0 is the most significant bit of byte 0; padding bits are 0.
// Each ISA variant lives in its own translation unit and is compiled only with its own flags;
// bits_ref.cpp is the scalar twin.
#pragma once
#include <cstdint>

namespace embkern::bits {

// Per-query bounded heaps (see common/topk.h): for query q, dist[q*k .. q*k+k), idx[...] and
// size[q] elements kept so far. Smaller distance is better; ties go to the lower index.
struct HammingHeaps {
  int32_t* dist;
  int64_t* idx;
  int64_t* size;
  int64_t k;
};

// Offers every database row in [db_begin, db_end), in increasing index order, to each query's heap.
// Precondition: every index already kept in a heap is < db_begin (so an equal distance never
// displaces a kept element, and the filter can use a strict bar).
#define EMBKERN_BITS_SCAN_ARGS                                                                   \
  const uint8_t *queries, int64_t nq, const uint8_t *db, int64_t db_begin, int64_t db_end, \
      int64_t code_bytes, HammingHeaps heaps
void hamming_topk_scan_scalar(EMBKERN_BITS_SCAN_ARGS);
void hamming_topk_scan_avx2(EMBKERN_BITS_SCAN_ARGS);
void hamming_topk_scan_avx512(EMBKERN_BITS_SCAN_ARGS);           // AVX-512BW nibble lookups
void hamming_topk_scan_avx512vpopcnt(EMBKERN_BITS_SCAN_ARGS);    // AVX512_VPOPCNTDQ

// out[q * out_stride + j] = popcount(queries[q] ^ db[j]) for q < nq, j < nb.
#define EMBKERN_BITS_DIST_ARGS                                                                  \
  const uint8_t *queries, int64_t nq, const uint8_t *db, int64_t nb, int64_t code_bytes, int32_t *out, \
      int64_t out_stride
void hamming_distance_scalar(EMBKERN_BITS_DIST_ARGS);
void hamming_distance_avx2(EMBKERN_BITS_DIST_ARGS);
void hamming_distance_avx512(EMBKERN_BITS_DIST_ARGS);
void hamming_distance_avx512vpopcnt(EMBKERN_BITS_DIST_ARGS);

// out[i, :] = packbits(x[i, :] > threshold), rows of ceil(dim / 8) bytes.
#define EMBKERN_BITS_PACK_ARGS const float *x, int64_t n, int64_t dim, float threshold, uint8_t *out
void pack_bits_f32_scalar(EMBKERN_BITS_PACK_ARGS);
void pack_bits_f32_avx2(EMBKERN_BITS_PACK_ARGS);
void pack_bits_f32_avx512(EMBKERN_BITS_PACK_ARGS);

// Packs a row-major bool (one byte, 0 or 1) matrix; used for inputs that are not float32, after
// the comparison was done in their own dtype.
void pack_bits_bool_scalar(const uint8_t* x, int64_t n, int64_t dim, uint8_t* out);

// out[i, d] = bit d of codes[i] (1 byte per output element, 0 or 1).
void unpack_bits_scalar(const uint8_t* codes, int64_t n, int64_t dim, uint8_t* out);

// Shared by every variant: a code row as 64-bit words, the last one zero-padded. Word w holds bytes
// 8w .. 8w+7 in memory order (XOR and popcount do not care about the order inside a word).
inline int64_t words_per_code(int64_t code_bytes) { return (code_bytes + 7) / 8; }

}  // namespace embkern::bits
