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
// Sign codes: when x_codes is set the SpMM reads x from them instead of `x`. Row i's codes are the
// code_stride 32-bit words at x_codes + i * code_stride: words [0, code_words) hold 2 bits per
// column (column c in bits 2 (c % 16) and 2 (c % 16) + 1 of word c / 16: 01 = +, 10 = -, 00 = 0)
// and, with code_row_magnitude, word code_words holds the row's magnitude v_i as float bits
// (otherwise every row's is code_magnitude: L constant, e.g. beta = 0), so that
//   x[i, c] = +v_i, -v_i or +0.
// This is exactly the initial matrix L R of FastRP (entries 0 or +-sqrt(s) * L[i], in the storage
// dtype: fp32 and bf16 rounding are sign-symmetric and 0 * finite L is +0) in one 32- or 64-byte
// aligned record per row (d <= 112 or d <= 240; without per-row magnitudes d <= 128 or d <= 256)
// instead of 4 d bytes: the first iteration gathers one cache line per non-zero from a
// cache-resident array instead of DRAM rows. Each 2-bit field indexes a 4-entry table
// {0, +v, -v, 0}, which AVX-512 / AVX2 expand with one variable shift and one permute per vector.
//
// init_rows: the initial FastRP matrix  v = L[r] * [R(key_r, 0 .. rand_dim) | features[r] @ P]
// with the same y / acc epilogue, except that acc is overwritten (acc = acc_weight * ...).
#pragma once
#include <cstdint>
#include <limits>

#include "common/float_convert.h"
#include "common/hash.h"  // EMBKERN_HOST_DEVICE

namespace embkern::fastrp {

// A CSR matrix's column ids: int64, or int32 as scipy stores them, read in place (a widened copy
// of a scipy matrix's indices cost ~50 ms of the ~450 ms P5 call, mostly page faults on 80 MB).
struct ColumnIds {
  const void* p = nullptr;
  bool int32 = false;
  EMBKERN_HOST_DEVICE int64_t operator[](int64_t j) const {
    return int32 ? int64_t(static_cast<const int32_t*>(p)[j]) : static_cast<const int64_t*>(p)[j];
  }
};

// The column ids with their width fixed once per call, for the CPU's hot loops: ids[j] is then a
// plain load (testing ColumnIds::int32 per entry made the bf16 gathers 7-20% slower).
template <class I>
struct TypedIds {
  const I* p;
  int64_t operator[](int64_t j) const { return p[j]; }
};
template <class F>
inline void with_typed_ids(const ColumnIds& ids, F&& f) {
  if (ids.int32)
    f(TypedIds<int32_t>{static_cast<const int32_t*>(ids.p)});
  else
    f(TypedIds<int64_t>{static_cast<const int64_t*>(ids.p)});
}

// Sign-code records (see above).
inline int64_t code_words_of(int64_t d) { return (d + 15) / 16; }
inline int64_t code_stride_of(int64_t d, bool row_magnitude) {  // codes (+ magnitude), padded to 8 or 16k words
  const int64_t w = code_words_of(d) + (row_magnitude ? 1 : 0);
  return w <= 8 ? 8 : (w + 15) / 16 * 16;
}

// The magnitude of coded row r: sqrt(s) * L[r] (the product apply_row_scale makes), in the storage
// dtype. (In the ISA namespace: it is inline code compiled with each ISA's flags.)
inline namespace EMBKERN_ISA_NS {
inline float code_magnitude_of(float sqrt_s, const float* row_scale, int64_t r, bool bf16) {
  const float v = row_scale ? sqrt_s * row_scale[r] : sqrt_s;
  return bf16 ? bf16_to_f32(f32_to_bf16(v)) : v;
}
// The entry checks, shared by the op's first-offender scans and the degree pass (which must agree:
// an entry the pass flags is then located by the scans). A negative index is huge as unsigned; a
// graph weight must be finite and non-negative (NaN fails both compares; | keeps loops vectorizable).
inline bool bad_index(int64_t i, int64_t n) { return static_cast<uint64_t>(i) >= static_cast<uint64_t>(n); }
inline bool bad_graph_weight(float w) { return !(w >= 0.f) | !(w <= std::numeric_limits<float>::max()); }
}  // namespace EMBKERN_ISA_NS

struct SpmmArgs {
  const int64_t* indptr;   // [rows + 1]
  ColumnIds indices;       // [nnz], each in [0, rows of x)
  const float* weights;    // [nnz] or nullptr (all ones)
  int64_t nnz;             // indptr[rows]; bounds the prefetch look-ahead
  const void* x;           // [*, d] fp32 or bf16 (uint16 bits)
  bool x_bf16;
  int64_t d;
  const float* row_scale;  // [rows] or nullptr
  void* y;                 // [rows, d] or nullptr
  bool y_bf16;
  bool y_normalize;
  bool y_stream;           // store y with non-temporal stores (CPU, whole 64-byte rows; same bytes)
  float* acc;              // [rows, d] or nullptr
  float acc_weight;
  bool acc_normalize;
  bool acc_overwrite;      // acc = acc_weight * ... (no read of acc)
  const void* acc_src;     // [rows, d] fp32 or bf16, or nullptr (see above; never the same memory as acc or x)
  bool acc_src_bf16;
  float acc_src_weight;
  bool acc_src_normalize;
  const uint32_t* x_codes; // [*, code_stride] or nullptr (see above; x is then unused)
  int64_t code_words;      // code_words_of(d)
  int64_t code_stride;     // code_stride_of(d, code_row_magnitude)
  bool code_row_magnitude; // each record ends with its row's magnitude; else all rows have code_magnitude
  float code_magnitude;
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
  uint32_t* codes;           // [rows, code_stride_of(dim, code_row_magnitude)] or nullptr: L R as sign
  bool code_row_magnitude;   // codes (rand_dim == dim), with each row's magnitude when L is not constant;
  bool vals_bf16;            // the magnitude sqrt(s) * L[r] rounded to bf16 (bf16 storage)
};

// degree_rows: rows [row_begin, row_end) of FastRP's degrees, deg = the row's weights summed in CSR
// order in double (the entry count without weights): inv_deg = 1 / deg and lscale = deg^beta (0 and 1
// for deg 0; 1 for beta 0), and the checks of those rows' entries (the pass reads them anyway).
struct DegreeArgs {
  const int64_t* indptr;   // [n + 1], checked: starts at 0, non-decreasing
  ColumnIds indices;       // [nnz]
  const float* weights;    // [nnz] or nullptr
  int64_t n;
  double beta;
  float* inv_deg;          // [n]
  float* lscale;           // [n]
};
struct DegreeFlags {
  bool bad_entry = false;  // an index outside [0, n), or a weight negative, NaN or inf
  bool non_unit = false;   // a weight other than 1
};

void spmm_rows_scalar(const SpmmArgs& a, int64_t row_begin, int64_t row_end);
void spmm_rows_avx2(const SpmmArgs& a, int64_t row_begin, int64_t row_end);
void spmm_rows_avx512(const SpmmArgs& a, int64_t row_begin, int64_t row_end);

void init_rows_scalar(const InitArgs& a, int64_t row_begin, int64_t row_end);
void init_rows_avx2(const InitArgs& a, int64_t row_begin, int64_t row_end);
void init_rows_avx512(const InitArgs& a, int64_t row_begin, int64_t row_end);

DegreeFlags degree_rows_scalar(const DegreeArgs& a, int64_t row_begin, int64_t row_end);
DegreeFlags degree_rows_avx2(const DegreeArgs& a, int64_t row_begin, int64_t row_end);
DegreeFlags degree_rows_avx512(const DegreeArgs& a, int64_t row_begin, int64_t row_end);

}  // namespace embkern::fastrp
