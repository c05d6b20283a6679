// fastrp family kernels over raw pointers. Framework-free.
//
// spmm_rows: rows [row_begin, row_end) of  v = row_scale[r] * sum_{j in row r} weights[j] * x[indices[j], :]
// (CSR x dense, fp32 accumulation, the row's entries summed in CSR order, every column in the same
// order on every ISA, so all paths give identical bits), followed by a fused epilogue:
//   y[r]   = y_normalize   ? v / ||v|| : v          (stored as fp32 or bf16, round to nearest even)
//   acc[r] = acc[r] + acc_weight * (acc_normalize ? v / ||v|| : v)     (fp32; acc_overwrite drops acc[r] +)
// With acc_src (CPU only) acc[r] is first overwritten with
//   acc_src_weight * (acc_src_normalize ? s / ||s|| : s),  s = acc_src[r]  (fp32, or bf16 widened exactly)
// (the pending term of an earlier iterate, as stored in another buffer; in fp32 the same bits as if
// that term had been written to acc by its own iteration with acc_overwrite).
// A zero row normalizes to zero. The result of a row never depends on how rows are split among
// threads.
//
// Sign codes: when x_codes is set the SpMM reads x from them instead of `x`: row i of x is
//   x[i, c] = +x_vals[i] if bit c % 16 of word pos[c / 16] is set, -x_vals[i] if that bit of
//   neg[c / 16] is, else +0,   where row i's codes are pos = x_codes + i * 2 * code_words, neg = pos + code_words.
// This is exactly the initial matrix L R of FastRP (entries 0 or +-sqrt(s) * L[i], in the storage
// dtype: fp32 and bf16 rounding are sign-symmetric and 0 * finite L is +0) in d / 4 bytes per row
// instead of 4 d: the first iteration gathers from a cache-resident array instead of DRAM.
//
// init_rows: the initial FastRP matrix  v = L[r] * [R(key_r, 0 .. rand_dim) | features[r] @ P]
// with the same y / acc epilogue, except that acc is overwritten (acc = acc_weight * ...).
#pragma once
#include <cstdint>

namespace embkern::fastrp {

struct SpmmArgs {
  const int64_t* indptr;   // [rows + 1]
  const int64_t* indices;  // [nnz], each in [0, rows of x)
  const float* weights;    // [nnz] or nullptr (all ones)
  int64_t nnz;             // indptr[rows]; bounds the prefetch look-ahead
  const void* x;           // [*, d] fp32 or bf16 (uint16 bits)
  bool x_bf16;
  int64_t d;
  const float* row_scale;  // [rows] or nullptr
  void* y;                 // [rows, d] or nullptr
  bool y_bf16;
  bool y_normalize;
  float* acc;              // [rows, d] or nullptr
  float acc_weight;
  bool acc_normalize;
  bool acc_overwrite;      // acc = acc_weight * ... (no read of acc)
  const void* acc_src;     // [rows, d] fp32 or bf16, or nullptr (see above; never the same memory as acc or x)
  bool acc_src_bf16;
  float acc_src_weight;
  bool acc_src_normalize;
  const uint16_t* x_codes; // [*, 2 * code_words] or nullptr (see above; x is then unused)
  const float* x_vals;     // [*] magnitudes of the coded rows
  int64_t code_words;      // ceil(d / 16)
};

struct InitArgs {
  int64_t dim;
  int64_t rand_dim;          // columns [0, rand_dim) from R, [rand_dim, dim) from features @ P
  uint64_t seed_state;       // rp_seed_state(seed, false)
  const int64_t* keys;       // [rows] or nullptr (key = row index)
  uint64_t threshold;
  float sqrt_s;
  const float* row_scale;    // L = deg^beta, [rows] or nullptr
  const float* features;     // [rows, num_features] or nullptr
  int64_t num_features;
  const float* feature_proj; // [num_features, dim - rand_dim]
  void* y;
  bool y_bf16;
  float* acc;                // overwritten; nullptr to skip
  float acc_weight;
  bool acc_normalize;
  uint16_t* codes;           // [rows, 2 * ceil(dim / 16)] or nullptr: sign codes of R (rand_dim == dim)
  float* vals;               // [rows]: sqrt(s) * L[r], rounded to bf16 when vals_bf16
  bool vals_bf16;
};

void spmm_rows_scalar(const SpmmArgs& a, int64_t row_begin, int64_t row_end);
void spmm_rows_avx2(const SpmmArgs& a, int64_t row_begin, int64_t row_end);
void spmm_rows_avx512(const SpmmArgs& a, int64_t row_begin, int64_t row_end);

void init_rows_scalar(const InitArgs& a, int64_t row_begin, int64_t row_end);
void init_rows_avx2(const InitArgs& a, int64_t row_begin, int64_t row_end);
void init_rows_avx512(const InitArgs& a, int64_t row_begin, int64_t row_end);

}  // namespace embkern::fastrp
