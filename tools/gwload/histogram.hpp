// A log-linear latency histogram (HdrHistogram-like), microsecond resolution.
//
// Values below 2 * kSub are counted exactly. Above that, each power of two [2^k, 2^(k+1))
// is split into kSub equal buckets, so a reported value is at most 1/kSub (0.8%) above the
// true one. Values above kMaxValue (2^41 - 1 us, about 25 days) are clamped.
//
//   bucket index:  0 .. 2*kSub-1          value itself (exact)
//                  (s+1)*kSub + m-kSub    values [m << s, (m+1) << s), m in [kSub, 2*kSub)
//
// Trivially copyable on purpose: gwload's worker processes send it to the parent as bytes.
// Not thread-safe; one per worker, merged at the end.

#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace gwload {

class Histogram {
 public:
  static constexpr int kSubBits = 7;
  static constexpr uint64_t kSub = uint64_t{1} << kSubBits;
  static constexpr int kMaxShift = 33;
  static constexpr uint64_t kMaxValue = (uint64_t{1} << (kMaxShift + kSubBits + 1)) - 1;
  static constexpr size_t kBuckets = (kMaxShift + 2) * kSub;

  void Record(uint64_t value) {
    value = std::min(value, kMaxValue);
    ++counts_[Index(value)];
    ++count_;
    sum_ += value;
    max_ = std::max(max_, value);
  }

  void Merge(const Histogram& other) {
    for (size_t i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
    count_ += other.count_;
    sum_ += other.sum_;
    max_ = std::max(max_, other.max_);
  }

  uint64_t Count() const { return count_; }
  uint64_t Max() const { return max_; }
  double Mean() const { return count_ == 0 ? 0.0 : static_cast<double>(sum_) / static_cast<double>(count_); }

  // The smallest bucket upper bound at or below which a fraction `q` (0..1] of the values
  // lie, capped at the exact maximum; 0 when empty.
  uint64_t Quantile(double q) const {
    if (count_ == 0) return 0;
    auto rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_)));
    rank = std::clamp<uint64_t>(rank, 1, count_);
    uint64_t seen = 0;
    for (size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::min(UpperBound(i), max_);
    }
    return max_;
  }

  static size_t Index(uint64_t value) {
    if (value < 2 * kSub) return static_cast<size_t>(value);
    int shift = std::bit_width(value) - (kSubBits + 1);
    return static_cast<size_t>((static_cast<uint64_t>(shift) + 1) * kSub + ((value >> shift) - kSub));
  }

  static uint64_t UpperBound(size_t index) {
    if (index < 2 * kSub) return index;
    uint64_t shift = index / kSub - 1;
    uint64_t mantissa = kSub + index % kSub;
    return ((mantissa + 1) << shift) - 1;
  }

 private:
  std::array<uint64_t, kBuckets> counts_{};
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t max_ = 0;
};

}  // namespace gwload
