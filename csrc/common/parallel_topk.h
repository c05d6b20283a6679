// Parallel exact top-k driver for the op layer (uses ATen's thread pool). A family supplies a scan
// function that offers database rows, in increasing index order, to per-query heaps
// (common/topk.h); this driver splits the work, merges and sorts. The answer is unique (values,
// then lower index), so it does not depend on the split or the thread count.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/checks.h"
#include "common/topk.h"

namespace embkern {

// Database rows per task below which the database is not split.
constexpr int64_t kMinTopkRowsPerTask = 4096;

// scan(q_begin, q_end, db_begin, db_end, heap_vals, heap_ids, heap_sizes): offers rows
// [db_begin, db_end) in increasing order to the heaps of queries [q_begin, q_end); heap j (0-based
// within the range) owns heap_vals[j*k .. j*k+k), heap_ids[...] and heap_sizes[j]. Every index
// already kept is < db_begin when scan is called.
// Writes out_vals / out_ids [nq, k], best first.
template <typename T, bool LargerIsBetter, class Scan>
void parallel_topk(int64_t nq, int64_t nb, int64_t k, T* out_vals, int64_t* out_ids, const char* op, Scan&& scan) {
  using Heap = TopKHeap<T, LargerIsBetter>;
  if (nq == 0 || k == 0) return;
  const int64_t threads = at::get_num_threads();
  const int64_t qk = checked_mul(nq, k, op, "the output size queries x k");
  // By queries when there are enough of them (no merge, each task streams the whole database);
  // else by database ranges, each task with heaps of its own, merged below.
  if (threads <= 1 || nq >= 8 * threads || nb < 2 * kMinTopkRowsPerTask) {
    at::parallel_for(0, nq, 1, [&](int64_t b, int64_t e) {
      std::vector<int64_t> sizes(size_t(e - b), 0);
      scan(b, e, int64_t(0), nb, out_vals + b * k, out_ids + b * k, sizes.data());
      for (int64_t i = b; i < e; ++i) Heap(out_vals + i * k, out_ids + i * k, k, sizes[i - b]).sort_best_first();
    });
    return;
  }
  const int64_t tasks = std::min(threads, nb / kMinTopkRowsPerTask);
  std::vector<T> task_v(size_t(checked_mul(tasks, qk, op, "per-task heaps")));
  std::vector<int64_t> task_i(task_v.size()), task_n(size_t(tasks * nq), 0);
  at::parallel_for(0, tasks, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t)
      scan(int64_t(0), nq, t * nb / tasks, (t + 1) * nb / tasks, &task_v[t * qk], &task_i[t * qk], &task_n[t * nq]);
  });
  at::parallel_for(0, nq, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      Heap heap(out_vals + i * k, out_ids + i * k, k);
      for (int64_t t = 0; t < tasks; ++t)
        for (int64_t j = 0; j < task_n[t * nq + i]; ++j) heap.push(task_v[t * qk + i * k + j], task_i[t * qk + i * k + j]);
      heap.sort_best_first();
    }
  });
}

}  // namespace embkern
