// Portable scalar twin of the bits kernels: the reference every vector path must match bit for bit.
#include "bits/bits_common.h"

namespace embkern::bits {

namespace {
inline int32_t hamming_words(const uint64_t* a, const uint64_t* b, int64_t words) {
  int32_t d = 0;
  for (int64_t w = 0; w < words; ++w) d += __builtin_popcountll(a[w] ^ b[w]);
  return d;
}
}  // namespace

void hamming_topk_scan_scalar(EMBKERN_BITS_SCAN_ARGS) {
  const int64_t words = words_per_code(code_bytes);
  auto qw = codes_as_words(queries, nq, code_bytes);
  std::unique_ptr<uint64_t[]> row(new uint64_t[size_t(words)]);
  for (int64_t j = db_begin; j < db_end; ++j) {
    for (int64_t w = 0; w < words; ++w) row[w] = load_code_word(db + j * code_bytes, code_bytes, w);
    for (int64_t q = 0; q < nq; ++q) {
      HammingHeap heap(heaps.dist + q * heaps.k, heaps.idx + q * heaps.k, heaps.k, heaps.size[q]);
      const int32_t d = hamming_words(&qw[q * words], row.get(), words);
      if (d < heap.bar()) {
        heap.push(d, j);
        heaps.size[q] = heap.size();
      }
    }
  }
}

void hamming_distance_scalar(EMBKERN_BITS_DIST_ARGS) {
  const int64_t words = words_per_code(code_bytes);
  auto qw = codes_as_words(queries, nq, code_bytes);
  std::unique_ptr<uint64_t[]> row(new uint64_t[size_t(words)]);
  for (int64_t j = 0; j < nb; ++j) {
    for (int64_t w = 0; w < words; ++w) row[w] = load_code_word(db + j * code_bytes, code_bytes, w);
    for (int64_t q = 0; q < nq; ++q) out[q * out_stride + j] = hamming_words(&qw[q * words], row.get(), words);
  }
}

void pack_bits_f32_scalar(EMBKERN_BITS_PACK_ARGS) {
  const int64_t bytes = (dim + 7) / 8;
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x + i * dim;
    uint8_t* o = out + i * bytes;
    for (int64_t b = 0; b < bytes; ++b) {
      uint8_t v = 0;
      for (int64_t t = 0; t < 8; ++t) {
        const int64_t d = 8 * b + t;
        v = uint8_t(v << 1) | uint8_t(d < dim && xr[d] > threshold);
      }
      o[b] = v;
    }
  }
}

void pack_bits_bool_scalar(const uint8_t* x, int64_t n, int64_t dim, uint8_t* out) {
  const int64_t bytes = (dim + 7) / 8;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* xr = x + i * dim;
    for (int64_t b = 0; b < bytes; ++b) {
      uint8_t v = 0;
      for (int64_t t = 0; t < 8; ++t) {
        const int64_t d = 8 * b + t;
        v = uint8_t(v << 1) | uint8_t(d < dim && xr[d] != 0);
      }
      out[i * bytes + b] = v;
    }
  }
}

void unpack_bits_scalar(const uint8_t* codes, int64_t n, int64_t dim, uint8_t* out) {
  const int64_t bytes = (dim + 7) / 8;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < dim; ++d) out[i * dim + d] = (codes[i * bytes + d / 8] >> (7 - d % 8)) & 1;
}

}  // namespace embkern::bits
