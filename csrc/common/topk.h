// Exact top-k selection shared by every search op. Framework-free, header-only.
//
// Order: "better" means a smaller value (distances) or a larger value (similarities), and on equal
// values the lower index. The heap keeps the worst kept element at its root, so a candidate is
// tested against one number (the bar) and only candidates that beat it touch the heap.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

#include "common/isa_namespace.h"

namespace embkern {
inline namespace EMBKERN_ISA_NS {

template <typename T, bool LargerIsBetter>
struct TopKOrder {
  static bool better(T a, int64_t ia, T b, int64_t ib) {
    if (a != b) return LargerIsBetter ? a > b : a < b;
    return ia < ib;
  }
  // The value no candidate can be worse than (used as the bar while the heap is not full).
  static constexpr T worst_value() {
    return LargerIsBetter ? std::numeric_limits<T>::lowest() : std::numeric_limits<T>::max();
  }
};

// A bounded max-heap (by "worse") over caller-owned storage of k values and k indices.
template <typename T, bool LargerIsBetter>
class TopKHeap {
 public:
  using Order = TopKOrder<T, LargerIsBetter>;

  TopKHeap(T* vals, int64_t* ids, int64_t k, int64_t size = 0) : v_(vals), id_(ids), k_(k), n_(size) {}

  int64_t size() const { return n_; }
  bool full() const { return n_ == k_; }
  // Worst kept value once full; before that every candidate is admitted.
  T bar() const { return full() ? v_[0] : Order::worst_value(); }

  // Offers (val, idx); keeps it if the heap is not full or it beats the worst kept element.
  void push(T val, int64_t idx) {
    if (n_ < k_) {
      int64_t i = n_++;
      while (i > 0) {  // sift up
        const int64_t p = (i - 1) / 2;
        if (!Order::better(v_[p], id_[p], val, idx)) break;
        v_[i] = v_[p];
        id_[i] = id_[p];
        i = p;
      }
      v_[i] = val;
      id_[i] = idx;
      return;
    }
    if (k_ == 0 || !Order::better(val, idx, v_[0], id_[0])) return;
    sift_down_from_root(val, idx);
  }

  // Sorts the kept elements best first, in place (the heap is consumed).
  void sort_best_first() {
    for (int64_t n = n_; n > 1; --n) {
      const T val = v_[n - 1];
      const int64_t idx = id_[n - 1];
      v_[n - 1] = v_[0];
      id_[n - 1] = id_[0];
      const int64_t saved = n_;
      n_ = n - 1;
      sift_down_from_root(val, idx);
      n_ = saved;
    }
  }

 private:
  void sift_down_from_root(T val, int64_t idx) {
    int64_t i = 0;
    for (;;) {
      int64_t c = 2 * i + 1;
      if (c >= n_) break;
      if (c + 1 < n_ && Order::better(v_[c], id_[c], v_[c + 1], id_[c + 1])) ++c;  // worse child
      if (!Order::better(val, idx, v_[c], id_[c])) break;
      v_[i] = v_[c];
      id_[i] = id_[c];
      i = c;
    }
    v_[i] = val;
    id_[i] = idx;
  }

  T* v_;
  int64_t* id_;
  int64_t k_;
  int64_t n_;
};

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern
