// CUDA kernels of the bits family: packing, unpacking, Hamming distances and exact Hamming top-k.
// Raw device pointers and a caller's stream only (no torch headers); results equal the CPU path
// (bits_ref.cpp) bit for bit.
//
// Codes are row-major uint8 rows of `code_bytes` bytes, any width. Kernels read a row as 32-bit
// words (bytes past the row's end read as 0 on both sides, so they never count): one 32-bit load
// per word when every row starts 4-byte aligned (code_bytes % 4 == 0 and an aligned base), byte
// loads otherwise. Popcount does not care how bytes are ordered inside a word, as long as queries
// and database agree.
//
// Distance tiles: a block of 256 threads scores a tile of 256 database rows (one per thread)
// against TQ queries (16, 4 or 1) at a time, staging kWordChunk words of every row in shared
// memory (padded rows: conflict-free), with the queries' words broadcast from shared memory.
//
// hamming_topk (exact, deterministic, no nq x nb buffer). Distances are integers in [0, B],
// B = 8 * code_bytes. The database is cut into S segments of whole tiles (S depends on nq and nb
// only); blocks take (query tile, segment) tasks.
//   1. histogram: hist[q][d] = #rows at distance d (block-private shared histograms flushed with
//      64-bit integer atomics, or global atomics for very wide codes). Integer sums: deterministic.
//   2. threshold: per query (one warp), t = the smallest d with count(<= d) >= k;
//      need = k - count(< t) >= 1 ties at distance t are taken.
//   3. counts: per (query, segment), the number of rows with d < t and with d == t.
//   4. collect: each block walks its segment in index order; rows with d < t go to
//      cand[q][lt_offset(segment) + rank], rows with d == t whose index-order rank among all ties
//      is < need go to cand[q][k - need + rank] (ranks by warp ballots + per-segment prefix sums).
//      So cand[q] holds exactly the top-k set, in index order within each class.
//   5. sort: per query (one warp), a stable counting sort of cand[q] by distance, with the bin
//      starts taken from the histogram: (distance, index) ascending.
// Queries run in batches of nqb = nq, or fewer when 8*nqb*(B+1) would pass 64 MiB (only for very
// wide codes or huge nq). Workspace (each part rounded up to 256 bytes):
//   8*nqb*(B+1) [hist] + 4*nqb [t] + 8*nqb [need] + 16*nqb*S [segment counts] + 12*nqb*k [candidates]
// with S <= 256 segments.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bits/bits_cuda.h"

namespace embkern::bits::cuda {
namespace {

constexpr int kThreads = 256;                 // threads per block = database rows per tile
constexpr int kWarps = kThreads / 32;
constexpr int kWordChunk = 16;                // 32-bit words of each row staged at a time (64 bytes)
constexpr int kRowStride = kWordChunk + 1;    // odd stride: conflict-free shared reads and writes
constexpr int64_t kTargetTasks = 2048;        // (query tile, segment) tasks aimed for
constexpr int64_t kMaxSegments = 256;
constexpr size_t kMaxSharedHistBytes = 64 * 1024;
constexpr size_t kHistBudgetBytes = size_t(64) << 20;  // per-query distance histograms of one batch
constexpr unsigned kFull = 0xffffffffu;

// ---- host helpers --------------------------------------------------------------------------------

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error("embkern bits (CUDA): " + msg); }

void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail(std::string(what) + " failed to launch: " + cudaGetErrorString(e));
}

void check_call(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(std::string(what) + " failed: " + cudaGetErrorString(e));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t mul_checked(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) fail(std::string("size overflow computing ") + what);
  return r;
}

unsigned grid_for(int64_t work_items, int64_t per_block) {
  const int64_t blocks = std::max<int64_t>(1, ceil_div(work_items, per_block));
  return unsigned(std::min<int64_t>(blocks, INT_MAX));
}

// How a (nq x nb) scan is cut into (query tile, segment) tasks. Depends on nq and nb only, so the
// workspace size is known before launching.
struct Plan {
  int tq = 1;            // queries per tile: 16, 4 or 1
  int64_t qtiles = 0;    // ceil(nq / tq)
  int64_t seg_rows = 0;  // rows per segment (a multiple of kThreads)
  int64_t segments = 0;  // ceil(nb / seg_rows)
};

Plan make_plan(int64_t nq, int64_t nb) {
  Plan p;
  p.tq = nq >= 16 ? 16 : (nq >= 4 ? 4 : 1);
  p.qtiles = ceil_div(std::max<int64_t>(nq, 1), p.tq);
  const int64_t tiles = std::max<int64_t>(1, ceil_div(nb, kThreads));
  int64_t want = std::clamp<int64_t>(ceil_div(kTargetTasks, p.qtiles), 1, kMaxSegments);
  want = std::min(want, tiles);
  const int64_t seg_tiles = ceil_div(tiles, want);
  p.seg_rows = seg_tiles * kThreads;
  p.segments = ceil_div(tiles, seg_tiles);
  return p;
}

struct ScanArgs {
  const uint8_t* queries;
  int64_t nq;
  const uint8_t* db;
  int64_t nb;
  int64_t code_bytes;
  bool q_aligned;   // every query row starts 4-byte aligned and code_bytes % 4 == 0
  bool db_aligned;  // the same for database rows
  int64_t seg_rows;
  int64_t segments;
  int64_t qtiles;
};

ScanArgs make_scan_args(const uint8_t* queries, int64_t nq, const uint8_t* db, int64_t nb, int64_t cb,
                        const Plan& p) {
  const bool words = cb % 4 == 0;
  return ScanArgs{queries, nq, db, nb, cb,
                  words && reinterpret_cast<uintptr_t>(queries) % 4 == 0,
                  words && reinterpret_cast<uintptr_t>(db) % 4 == 0,
                  p.seg_rows, p.segments, p.qtiles};
}

// ---- device: distance tiles ----------------------------------------------------------------------

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Word w of a row: bytes [4w, 4w + 4), those at or past code_bytes read as 0.
__device__ __forceinline__ uint32_t load_word(const uint8_t* row, int64_t cb, int64_t w, bool aligned) {
  const int64_t b = 4 * w;
  if (aligned) return __ldg(reinterpret_cast<const uint32_t*>(row + b));
  uint32_t v = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i)
    if (b + i < cb) v |= uint32_t(__ldg(row + b + i)) << (8 * i);
  return v;
}

template <int TQ>
struct TileSmem {
  alignas(16) uint32_t q[kWordChunk * TQ];  // q[w * TQ + i]: word w of query q0 + i
  uint32_t db[kThreads * kRowStride];       // db[r * kRowStride + w]: word w of row base + r
};

// Scores rows [row_begin, row_end) against queries [q0, q0 + TQ) in tiles of kThreads rows, in
// index order. For each tile, every thread of the block calls visit(row, valid, acc) with
// acc[i] = distance(query q0 + i, row) (0 for queries past nq); visit may use __syncthreads.
template <int TQ, class Visit>
__device__ __forceinline__ void scan_rows(TileSmem<TQ>& sm, const ScanArgs& a, int64_t q0, int64_t row_begin,
                                          int64_t row_end, Visit&& visit) {
  const int tid = threadIdx.x;
  const int64_t cb = a.code_bytes;
  const int64_t words = (cb + 3) / 4;
  for (int64_t base = row_begin; base < row_end; base += kThreads) {
    const int nrows = int(min64(kThreads, row_end - base));
    uint32_t acc[TQ];
#pragma unroll
    for (int i = 0; i < TQ; ++i) acc[i] = 0;
    for (int64_t w0 = 0; w0 < words; w0 += kWordChunk) {
      const int wn = int(min64(kWordChunk, words - w0));
      __syncthreads();  // the previous chunk (or the previous tile's visit) is done with shared memory
      for (int i = tid; i < kThreads * wn; i += kThreads) {
        const int r = wn == kWordChunk ? i / kWordChunk : i / wn;
        const int w = i - r * wn;
        uint32_t v = 0;
        if (r < nrows) v = load_word(a.db + (base + r) * cb, cb, w0 + w, a.db_aligned);
        sm.db[r * kRowStride + w] = v;
      }
      for (int i = tid; i < TQ * wn; i += kThreads) {
        const int w = i / TQ, qi = i - w * TQ;
        uint32_t v = 0;
        if (q0 + qi < a.nq) v = load_word(a.queries + (q0 + qi) * cb, cb, w0 + w, a.q_aligned);
        sm.q[w * TQ + qi] = v;
      }
      __syncthreads();
      const uint32_t* row = sm.db + tid * kRowStride;
      for (int w = 0; w < wn; ++w) {
        const uint32_t x = row[w];
        if constexpr (TQ % 4 == 0) {
          const uint4* qv = reinterpret_cast<const uint4*>(sm.q + w * TQ);
#pragma unroll
          for (int g = 0; g < TQ / 4; ++g) {
            const uint4 v = qv[g];
            acc[4 * g + 0] += __popc(v.x ^ x);
            acc[4 * g + 1] += __popc(v.y ^ x);
            acc[4 * g + 2] += __popc(v.z ^ x);
            acc[4 * g + 3] += __popc(v.w ^ x);
          }
        } else {
#pragma unroll
          for (int i = 0; i < TQ; ++i) acc[i] += __popc(sm.q[w * TQ + i] ^ x);
        }
      }
    }
    visit(base + tid, tid < nrows, acc);
  }
}

struct Task {
  int64_t q0, seg, row_begin, row_end;
};

template <int TQ>
__device__ __forceinline__ Task task_of(const ScanArgs& a, int64_t task) {
  const int64_t qt = task / a.segments, s = task - qt * a.segments;
  const int64_t rb = s * a.seg_rows;
  return Task{qt * TQ, s, rb, min64(rb + a.seg_rows, a.nb)};
}

// ---- device: pack / unpack / distance ------------------------------------------------------------

// One warp per 32 dimensions of a row: coalesced loads, one ballot, 4 output bytes.
__global__ void __launch_bounds__(kThreads) pack_bits_f32_kernel(const float* __restrict__ x, int64_t n, int64_t dim,
                                                                 float threshold, uint8_t* __restrict__ out) {
  const int64_t bytes = (dim + 7) / 8;
  const int64_t chunks = (dim + 31) / 32;
  const int64_t total = n * chunks;
  const int lane = threadIdx.x & 31;
  const int64_t stride = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t wi = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; wi < total; wi += stride) {
    const int64_t i = wi / chunks, c = wi - i * chunks;
    const int64_t d = 32 * c + lane;
    const bool bit = d < dim && __ldg(x + i * dim + d) > threshold;  // NaN > t is false
    // Bit l of the ballot is dimension 32c + l; reversed, dimension 32c + 8j + 7 - b is bit b of byte j.
    const uint32_t rev = __brev(__ballot_sync(kFull, bit));
    if (lane < 4) {
      const int64_t byte = 4 * c + lane;
      if (byte < bytes) out[i * bytes + byte] = uint8_t(rev >> (24 - 8 * lane));
    }
  }
}

__global__ void __launch_bounds__(kThreads) unpack_bits_kernel(const uint8_t* __restrict__ codes, int64_t n,
                                                               int64_t dim, uint8_t* __restrict__ out) {
  const int64_t bytes = (dim + 7) / 8;
  const int64_t total = n * dim;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t i = e / dim, d = e - i * dim;
    out[e] = (__ldg(codes + i * bytes + (d >> 3)) >> (7 - (d & 7))) & 1;
  }
}

template <int TQ>
__global__ void __launch_bounds__(kThreads) distance_kernel(ScanArgs a, int32_t* __restrict__ out) {
  __shared__ TileSmem<TQ> sm;
  const int64_t tasks = a.qtiles * a.segments;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const Task t = task_of<TQ>(a, task);
    scan_rows<TQ>(sm, a, t.q0, t.row_begin, t.row_end, [&](int64_t j, bool valid, const uint32_t(&acc)[TQ]) {
      if (!valid) return;
#pragma unroll
      for (int i = 0; i < TQ; ++i)
        if (t.q0 + i < a.nq) out[(t.q0 + i) * a.nb + j] = int32_t(acc[i]);
    });
  }
}

// ---- device: top-k passes ------------------------------------------------------------------------

// Pass 1: hist[q * bins + d] += #rows at distance d.
template <int TQ, bool kSharedHist>
__global__ void __launch_bounds__(kThreads) topk_hist_kernel(ScanArgs a, unsigned long long* __restrict__ hist) {
  __shared__ TileSmem<TQ> sm;
  extern __shared__ uint32_t shist[];  // [TQ][bins] when kSharedHist
  const int64_t bins = 8 * a.code_bytes + 1;
  const int64_t tasks = a.qtiles * a.segments;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const Task t = task_of<TQ>(a, task);
    if constexpr (kSharedHist) {
      for (int64_t i = threadIdx.x; i < TQ * bins; i += kThreads) shist[i] = 0;
      // scan_rows synchronizes before the first visit.
    }
    scan_rows<TQ>(sm, a, t.q0, t.row_begin, t.row_end, [&](int64_t, bool valid, const uint32_t(&acc)[TQ]) {
      if (!valid) return;
#pragma unroll
      for (int i = 0; i < TQ; ++i) {
        if (t.q0 + i >= a.nq) continue;
        if constexpr (kSharedHist) {
          atomicAdd(&shist[i * bins + acc[i]], 1u);
        } else {
          atomicAdd(&hist[(t.q0 + i) * bins + acc[i]], 1ull);
        }
      }
    });
    if constexpr (kSharedHist) {
      __syncthreads();
      for (int64_t i = threadIdx.x; i < TQ * bins; i += kThreads) {
        const uint32_t c = shist[i];
        const int64_t qi = i / bins;
        if (c != 0 && t.q0 + qi < a.nq) atomicAdd(&hist[(t.q0 + qi) * bins + (i - qi * bins)], (unsigned long long)c);
      }
      __syncthreads();
    }
  }
}

// Pass 2 (one warp per query): thr[q] = smallest t with count(<= t) >= k; need[q] = k - count(< t).
__global__ void __launch_bounds__(kThreads) topk_threshold_kernel(const unsigned long long* __restrict__ hist,
                                                                  int64_t nq, int64_t bins, int64_t k,
                                                                  int32_t* __restrict__ thr,
                                                                  int64_t* __restrict__ need) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = (int64_t(gridDim.x) * blockDim.x) >> 5;
  const unsigned long long kk = (unsigned long long)k;
  for (int64_t q = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; q < nq; q += stride) {
    const unsigned long long* h = hist + q * bins;
    unsigned long long carry = 0;
    for (int64_t b0 = 0; b0 < bins; b0 += 32) {
      const int64_t b = b0 + lane;
      const unsigned long long c = b < bins ? h[b] : 0ull;
      unsigned long long x = c;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const unsigned long long y = __shfl_up_sync(kFull, x, off);
        if (lane >= off) x += y;
      }
      const unsigned long long incl = carry + x;
      const unsigned hit = __ballot_sync(kFull, b < bins && incl >= kk);
      if (hit) {
        const int l = __ffs(hit) - 1;
        const unsigned long long le = __shfl_sync(kFull, incl, l);
        const unsigned long long cnt = __shfl_sync(kFull, c, l);
        if (lane == 0) {
          thr[q] = int32_t(b0 + l);
          need[q] = int64_t(kk - (le - cnt));
        }
        break;
      }
      carry = __shfl_sync(kFull, incl, 31);
    }
  }
}

// Pass 3: per (query, segment), the number of rows with d < t and with d == t.
template <int TQ>
__global__ void __launch_bounds__(kThreads) topk_count_kernel(ScanArgs a, const int32_t* __restrict__ thr,
                                                              unsigned long long* __restrict__ seg_lt,
                                                              unsigned long long* __restrict__ seg_eq) {
  __shared__ TileSmem<TQ> sm;
  __shared__ int32_t s_t[TQ];
  __shared__ unsigned long long s_lt[TQ], s_eq[TQ];
  const int lane = threadIdx.x & 31;
  const int64_t tasks = a.qtiles * a.segments;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const Task t = task_of<TQ>(a, task);
    __syncthreads();  // the previous task's readers of s_* are done
    if (threadIdx.x < TQ) {
      const int64_t q = t.q0 + threadIdx.x;
      s_t[threadIdx.x] = q < a.nq ? thr[q] : -1;
      s_lt[threadIdx.x] = 0;
      s_eq[threadIdx.x] = 0;
    }
    // scan_rows synchronizes before the first visit.
    uint32_t lt[TQ], eq[TQ];
#pragma unroll
    for (int i = 0; i < TQ; ++i) lt[i] = eq[i] = 0;
    scan_rows<TQ>(sm, a, t.q0, t.row_begin, t.row_end, [&](int64_t, bool valid, const uint32_t(&acc)[TQ]) {
      if (!valid) return;
#pragma unroll
      for (int i = 0; i < TQ; ++i) {
        const int32_t d = int32_t(acc[i]), ti = s_t[i];
        lt[i] += d < ti;
        eq[i] += d == ti;
      }
    });
#pragma unroll
    for (int i = 0; i < TQ; ++i) {
      unsigned long long l = lt[i], e = eq[i];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        l += __shfl_xor_sync(kFull, l, off);
        e += __shfl_xor_sync(kFull, e, off);
      }
      if (lane == 0 && (l | e)) {
        atomicAdd(&s_lt[i], l);
        atomicAdd(&s_eq[i], e);
      }
    }
    __syncthreads();
    if (threadIdx.x < TQ && t.q0 + threadIdx.x < a.nq) {
      const int64_t q = t.q0 + threadIdx.x;
      seg_lt[q * a.segments + t.seg] = s_lt[threadIdx.x];
      seg_eq[q * a.segments + t.seg] = s_eq[threadIdx.x];
    }
  }
}

// Pass 4: writes the top-k set of each query into cand[q * k + ...]: rows with d < t at
// [lt_offset(segment) + rank), then the first `need` ties (d == t, index order) at [k - need, k).
template <int TQ>
__global__ void __launch_bounds__(kThreads) topk_collect_kernel(ScanArgs a, int64_t k, const int32_t* __restrict__ thr,
                                                                const int64_t* __restrict__ need,
                                                                const unsigned long long* __restrict__ seg_lt,
                                                                const unsigned long long* __restrict__ seg_eq,
                                                                int64_t* __restrict__ cand_idx,
                                                                int32_t* __restrict__ cand_d) {
  __shared__ TileSmem<TQ> sm;
  __shared__ int32_t s_t[TQ];
  __shared__ int64_t s_need[TQ], s_lt_pos[TQ], s_eq_rank[TQ];
  __shared__ uint32_t s_blt[TQ][kWarps], s_beq[TQ][kWarps];  // per-warp ballots of the current tile
  __shared__ int s_active;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t lanes_below = (1u << lane) - 1u;
  const int64_t tasks = a.qtiles * a.segments;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const Task t = task_of<TQ>(a, task);
    __syncthreads();  // the previous task's readers of s_* are done
    if (threadIdx.x == 0) s_active = 0;
    __syncthreads();
    if (threadIdx.x < TQ) {
      const int64_t q = t.q0 + threadIdx.x;
      int32_t ti = -1;  // matches no row
      int64_t nd = 0, lt_off = 0, eq_off = 0;
      if (q < a.nq) {
        const unsigned long long* sl = seg_lt + q * a.segments;
        const unsigned long long* se = seg_eq + q * a.segments;
        for (int64_t s = 0; s < t.seg; ++s) {
          lt_off += int64_t(sl[s]);
          eq_off += int64_t(se[s]);
        }
        nd = need[q];
        if (sl[t.seg] != 0 || (se[t.seg] != 0 && eq_off < nd)) {
          ti = thr[q];
          atomicOr(&s_active, 1);
        }
      }
      s_t[threadIdx.x] = ti;
      s_need[threadIdx.x] = nd;
      s_lt_pos[threadIdx.x] = (q < a.nq ? q * k : 0) + lt_off;
      s_eq_rank[threadIdx.x] = eq_off;
    }
    __syncthreads();
    if (!s_active) continue;  // block-uniform: no row of this segment is in any of these queries' top-k
    scan_rows<TQ>(sm, a, t.q0, t.row_begin, t.row_end, [&](int64_t j, bool valid, const uint32_t(&acc)[TQ]) {
      uint32_t lt_mask = 0, eq_mask = 0;  // bit i: query q0 + i
      if (valid) {
#pragma unroll
        for (int i = 0; i < TQ; ++i) {
          const int32_t d = int32_t(acc[i]), ti = s_t[i];
          lt_mask |= uint32_t(d < ti) << i;
          eq_mask |= uint32_t(d == ti) << i;
        }
      }
      if (!__syncthreads_or(int(lt_mask | eq_mask))) return;  // block-uniform
#pragma unroll
      for (int i = 0; i < TQ; ++i) {
        const uint32_t bl = __ballot_sync(kFull, (lt_mask >> i) & 1u);
        const uint32_t be = __ballot_sync(kFull, (eq_mask >> i) & 1u);
        if (lane == 0) {
          s_blt[i][warp] = bl;
          s_beq[i][warp] = be;
        }
      }
      __syncthreads();
      if (lt_mask | eq_mask) {
#pragma unroll
        for (int i = 0; i < TQ; ++i) {
          if ((lt_mask >> i) & 1u) {
            int64_t pos = s_lt_pos[i] + __popc(s_blt[i][warp] & lanes_below);
            for (int w = 0; w < warp; ++w) pos += __popc(s_blt[i][w]);
            cand_idx[pos] = j;
            cand_d[pos] = int32_t(acc[i]);
          } else if ((eq_mask >> i) & 1u) {
            int64_t rank = s_eq_rank[i] + __popc(s_beq[i][warp] & lanes_below);
            for (int w = 0; w < warp; ++w) rank += __popc(s_beq[i][w]);
            if (rank < s_need[i]) {
              const int64_t pos = (t.q0 + i) * k + (k - s_need[i]) + rank;
              cand_idx[pos] = j;
              cand_d[pos] = int32_t(acc[i]);
            }
          }
        }
      }
      __syncthreads();  // every thread has read s_lt_pos / s_eq_rank / s_b* of this tile
      if (threadIdx.x < TQ) {
        int64_t nl = 0, ne = 0;
        for (int w = 0; w < kWarps; ++w) {
          nl += __popc(s_blt[threadIdx.x][w]);
          ne += __popc(s_beq[threadIdx.x][w]);
        }
        s_lt_pos[threadIdx.x] += nl;
        s_eq_rank[threadIdx.x] += ne;
      }
      // The next tile's readers pass scan_rows' __syncthreads first.
    });
  }
}

// Pass 5 (one warp per query): stable counting sort of cand[q] by distance into the outputs.
// The bins' starts are the exclusive prefix sums of hist[q][0..t] (computed in place); rows with
// d < t are all in the top-k, and bin t holds the `need` ties, which come last.
__global__ void __launch_bounds__(kThreads) topk_sort_kernel(unsigned long long* __restrict__ hist, int64_t nq,
                                                             int64_t bins, int64_t k, const int32_t* __restrict__ thr,
                                                             const int64_t* __restrict__ cand_idx,
                                                             const int32_t* __restrict__ cand_d,
                                                             int32_t* __restrict__ out_d,
                                                             int64_t* __restrict__ out_i) {
  const int lane = threadIdx.x & 31;
  const uint32_t lanes_below = (1u << lane) - 1u;
  const int64_t stride = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t q = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; q < nq; q += stride) {
    unsigned long long* h = hist + q * bins;
    const int64_t t = thr[q];
    unsigned long long carry = 0;
    for (int64_t b0 = 0; b0 <= t; b0 += 32) {
      const int64_t b = b0 + lane;
      const unsigned long long c = b <= t ? h[b] : 0ull;
      unsigned long long x = c;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const unsigned long long y = __shfl_up_sync(kFull, x, off);
        if (lane >= off) x += y;
      }
      if (b <= t) h[b] = carry + x - c;
      carry += __shfl_sync(kFull, x, 31);
    }
    __syncwarp();
    const int64_t* ci = cand_idx + q * k;
    const int32_t* cd = cand_d + q * k;
    for (int64_t i0 = 0; i0 < k; i0 += 32) {
      const int64_t i = i0 + lane;
      int32_t d = i < k ? cd[i] : -1;
      const bool valid = d >= 0 && d <= t;  // always true for i < k (memory safety only)
      if (!valid) d = -1;
      const uint32_t peers = __match_any_sync(kFull, d);
      const int leader = __ffs(peers) - 1;
      const unsigned long long start = valid ? h[d] : 0ull;
      __syncwarp();
      if (valid) {
        const int64_t pos = q * k + int64_t(start) + __popc(peers & lanes_below);
        out_d[pos] = d;
        out_i[pos] = ci[i];
        if (lane == leader) h[d] = start + __popc(peers);
      }
      __syncwarp();
    }
  }
}

// ---- host: launches ------------------------------------------------------------------------------

template <int TQ>
void launch_distance(const ScanArgs& a, int32_t* out, cudaStream_t stream) {
  distance_kernel<TQ><<<grid_for(a.qtiles * a.segments, 1), kThreads, 0, stream>>>(a, out);
  check_launch("hamming_distance kernel");
}

struct TopkLayout {
  Plan plan;             // for a full batch
  int64_t batch = 0;     // queries per batch (the histogram is per query)
  int64_t bins = 0;
  size_t hist = 0, thr = 0, need = 0, seg_lt = 0, seg_eq = 0, cand_idx = 0, cand_d = 0, total = 0;
};

TopkLayout topk_layout(int64_t nq, int64_t nb, int64_t cb, int64_t k) {
  TopkLayout l;
  l.bins = mul_checked(8, cb, "the number of distance bins") + 1;
  // Queries are processed in batches whose histograms fit kHistBudgetBytes (one batch in practice:
  // 256-bit codes allow 32K queries per batch).
  const int64_t per_query = mul_checked(l.bins, 8, "the histogram size");
  int64_t batch = std::max<int64_t>(1, int64_t(kHistBudgetBytes) / per_query);
  if (batch >= 16) batch -= batch % 16;
  l.batch = std::clamp<int64_t>(nq, 1, batch);
  l.plan = make_plan(l.batch, nb);
  const int64_t q = l.batch;
  size_t off = 0;
  auto take = [&](int64_t count, int64_t elem, const char* what) {
    const size_t at = off;
    const int64_t bytes = mul_checked(count, elem, what);
    if (bytes > INT64_MAX - int64_t(off) - 256) fail(std::string("size overflow computing ") + what);
    off = (off + size_t(bytes) + 255) & ~size_t(255);
    return at;
  };
  l.hist = take(mul_checked(q, l.bins, "the histogram size"), 8, "the histogram size");
  l.thr = take(q, 4, "thresholds");
  l.need = take(q, 8, "tie counts");
  l.seg_lt = take(mul_checked(q, l.plan.segments, "segment counts"), 8, "segment counts");
  l.seg_eq = take(mul_checked(q, l.plan.segments, "segment counts"), 8, "segment counts");
  l.cand_idx = take(mul_checked(q, std::max<int64_t>(k, 0), "candidates"), 8, "candidates");
  l.cand_d = take(mul_checked(q, std::max<int64_t>(k, 0), "candidates"), 4, "candidates");
  l.total = off;
  return l;
}

template <int TQ>
void launch_topk_scans(const ScanArgs& a, const TopkLayout& l, int64_t k, char* ws, int32_t* out_d, int64_t* out_i,
                       cudaStream_t stream) {
  auto* hist = reinterpret_cast<unsigned long long*>(ws + l.hist);
  auto* thr = reinterpret_cast<int32_t*>(ws + l.thr);
  auto* need = reinterpret_cast<int64_t*>(ws + l.need);
  auto* seg_lt = reinterpret_cast<unsigned long long*>(ws + l.seg_lt);
  auto* seg_eq = reinterpret_cast<unsigned long long*>(ws + l.seg_eq);
  auto* cand_idx = reinterpret_cast<int64_t*>(ws + l.cand_idx);
  auto* cand_d = reinterpret_cast<int32_t*>(ws + l.cand_d);
  const int64_t nq = a.nq;
  const unsigned scan_grid = grid_for(a.qtiles * a.segments, 1);
  const unsigned warp_grid = grid_for(nq, kWarps);

  check_call(cudaMemsetAsync(hist, 0, size_t(nq) * size_t(l.bins) * 8, stream), "cudaMemsetAsync (histogram)");

  // Pass 1: shared-memory histograms when they fit (and their 32-bit counts cannot overflow).
  const size_t shist_bytes = size_t(TQ) * size_t(l.bins) * 4;
  bool shared_hist = shist_bytes <= kMaxSharedHistBytes && a.seg_rows < (int64_t(1) << 31);
  if (shared_hist) {
    int dev = 0, optin = 0;
    check_call(cudaGetDevice(&dev), "cudaGetDevice");
    check_call(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    cudaFuncAttributes attr{};
    check_call(cudaFuncGetAttributes(&attr, topk_hist_kernel<TQ, true>), "cudaFuncGetAttributes");
    shared_hist = attr.sharedSizeBytes + shist_bytes <= size_t(optin);
    if (shared_hist && attr.sharedSizeBytes + shist_bytes > 48 * 1024)
      check_call(cudaFuncSetAttribute(topk_hist_kernel<TQ, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(shist_bytes)),
                 "cudaFuncSetAttribute (histogram shared memory)");
  }
  if (shared_hist) {
    topk_hist_kernel<TQ, true><<<scan_grid, kThreads, shist_bytes, stream>>>(a, hist);
  } else {
    topk_hist_kernel<TQ, false><<<scan_grid, kThreads, 0, stream>>>(a, hist);
  }
  check_launch("hamming_topk histogram kernel");

  topk_threshold_kernel<<<warp_grid, kThreads, 0, stream>>>(hist, nq, l.bins, k, thr, need);
  check_launch("hamming_topk threshold kernel");

  topk_count_kernel<TQ><<<scan_grid, kThreads, 0, stream>>>(a, thr, seg_lt, seg_eq);
  check_launch("hamming_topk count kernel");

  topk_collect_kernel<TQ><<<scan_grid, kThreads, 0, stream>>>(a, k, thr, need, seg_lt, seg_eq, cand_idx, cand_d);
  check_launch("hamming_topk collect kernel");

  topk_sort_kernel<<<warp_grid, kThreads, 0, stream>>>(hist, nq, l.bins, k, thr, cand_idx, cand_d, out_d, out_i);
  check_launch("hamming_topk sort kernel");
}

void check_codes_args(int64_t nq, int64_t nb, int64_t cb, const char* op) {
  if (nq < 0 || nb < 0) fail(std::string(op) + ": negative row count");
  if (cb < 1) fail(std::string(op) + ": code_bytes must be >= 1, got " + std::to_string(cb));
  if (cb > (int64_t(INT32_MAX) - 1) / 8)
    fail(std::string(op) + ": code_bytes " + std::to_string(cb) + " is too large for int32 distances");
}

}  // namespace

// ---- public entry points -------------------------------------------------------------------------

void pack_bits_f32(const float* x, int64_t n, int64_t dim, float threshold, uint8_t* out, cudaStream_t stream) {
  if (n < 0 || dim < 0) fail("pack_bits: negative size");
  if (n == 0 || dim == 0) return;
  const int64_t warps = mul_checked(n, (dim + 31) / 32, "pack_bits work size");
  pack_bits_f32_kernel<<<grid_for(warps, kWarps), kThreads, 0, stream>>>(x, n, dim, threshold, out);
  check_launch("pack_bits kernel");
}

void unpack_bits(const uint8_t* codes, int64_t n, int64_t dim, uint8_t* out, cudaStream_t stream) {
  if (n < 0 || dim < 0) fail("unpack_bits: negative size");
  if (n == 0 || dim == 0) return;
  const int64_t total = mul_checked(n, dim, "unpack_bits output size");
  unpack_bits_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(codes, n, dim, out);
  check_launch("unpack_bits kernel");
}

void hamming_distance(const uint8_t* queries, int64_t nq, const uint8_t* db, int64_t nb, int64_t code_bytes,
                      int32_t* out, cudaStream_t stream) {
  check_codes_args(nq, nb, code_bytes, "hamming_distance");
  if (nq == 0 || nb == 0) return;
  mul_checked(nq, nb, "hamming_distance output size");
  const Plan p = make_plan(nq, nb);
  const ScanArgs a = make_scan_args(queries, nq, db, nb, code_bytes, p);
  switch (p.tq) {
    case 16: launch_distance<16>(a, out, stream); break;
    case 4: launch_distance<4>(a, out, stream); break;
    default: launch_distance<1>(a, out, stream); break;
  }
}

size_t hamming_topk_workspace_bytes(int64_t nq, int64_t nb, int64_t code_bytes, int64_t k) {
  if (nq <= 0) return 0;
  check_codes_args(nq, nb, code_bytes, "hamming_topk");
  return topk_layout(nq, nb, code_bytes, k).total;
}

void hamming_topk(const uint8_t* queries, int64_t nq, const uint8_t* db, int64_t nb, int64_t code_bytes, int64_t k,
                  int32_t* out_dist, int64_t* out_idx, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  check_codes_args(nq, nb, code_bytes, "hamming_topk");
  if (nq == 0) return;
  if (nb < 1) fail("hamming_topk: the database is empty");
  if (k < 1 || k > nb)
    fail("hamming_topk: k must be in [1, " + std::to_string(nb) + "], got " + std::to_string(k));
  const TopkLayout l = topk_layout(nq, nb, code_bytes, k);
  if (workspace == nullptr || workspace_bytes < l.total)
    fail("hamming_topk: workspace of " + std::to_string(workspace_bytes) + " bytes is smaller than the " +
         std::to_string(l.total) + " bytes needed");
  char* ws = static_cast<char*>(workspace);
  for (int64_t q0 = 0; q0 < nq; q0 += l.batch) {
    const int64_t nqb = std::min(l.batch, nq - q0);
    ScanArgs a = make_scan_args(queries + q0 * code_bytes, nqb, db, nb, code_bytes, l.plan);
    a.qtiles = ceil_div(nqb, l.plan.tq);
    int32_t* od = out_dist + q0 * k;
    int64_t* oi = out_idx + q0 * k;
    switch (l.plan.tq) {
      case 16: launch_topk_scans<16>(a, l, k, ws, od, oi, stream); break;
      case 4: launch_topk_scans<4>(a, l, k, ws, od, oi, stream); break;
      default: launch_topk_scans<1>(a, l, k, ws, od, oi, stream); break;
    }
  }
}

}  // namespace embkern::bits::cuda
