// gwload's latency histogram (tools/gwload/histogram.hpp): bucket layout,
// quantiles against an exact sort, merging, clamping.
#include "gwload/histogram.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

using gwload::Histogram;

namespace {

// The exact q-quantile as Histogram::Quantile defines it: the value of rank
// ceil(q * n) (1-based) in sorted order.
uint64_t exact_quantile(std::vector<uint64_t> v, double q) {
  std::sort(v.begin(), v.end());
  auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return v[rank - 1];
}

}  // namespace

TEST_SUITE("tools/gwload_histogram") {
  TEST_CASE("an empty histogram reports zeros") {
    Histogram h;
    CHECK(h.Count() == 0);
    CHECK(h.Max() == 0);
    CHECK(h.Mean() == 0.0);
    CHECK(h.Quantile(0.5) == 0);
    CHECK(h.Quantile(0.999) == 0);
  }

  TEST_CASE("values below 2 * kSub are exact") {
    Histogram h;
    for (uint64_t v = 0; v < 2 * Histogram::kSub; ++v) h.Record(v);
    const uint64_t n = 2 * Histogram::kSub;
    CHECK(h.Count() == n);
    CHECK(h.Max() == n - 1);
    CHECK(h.Mean() == doctest::Approx((n - 1) / 2.0));
    CHECK(h.Quantile(0.5) == n / 2 - 1);  // rank 128 of 0..255 is 127
    CHECK(h.Quantile(1.0) == n - 1);
    CHECK(h.Quantile(0.0) == 0);  // rank clamps to 1: the smallest value
    for (uint64_t v = 0; v < n; ++v) {
      CHECK(Histogram::Index(v) == v);
      CHECK(Histogram::UpperBound(Histogram::Index(v)) == v);
    }
  }

  TEST_CASE("every value falls in a bucket whose upper bound is at most 1/kSub above it") {
    std::mt19937_64 rng(42);
    for (int i = 0; i < 200000; ++i) {
      const uint64_t v = rng() >> (rng() % 64);
      const uint64_t c = std::min(v, Histogram::kMaxValue);
      const size_t idx = Histogram::Index(c);
      REQUIRE(idx < Histogram::kBuckets);
      const uint64_t ub = Histogram::UpperBound(idx);
      REQUIRE(ub >= c);
      REQUIRE(static_cast<double>(ub - c) <= static_cast<double>(c) / Histogram::kSub + 1e-9);
      if (idx > 0) REQUIRE(Histogram::UpperBound(idx - 1) < c);  // the smallest bucket that holds it
    }
    // Bucket edges: the first value of each power of two starts a new bucket.
    CHECK(Histogram::Index(2 * Histogram::kSub) == 2 * Histogram::kSub);
    CHECK(Histogram::UpperBound(2 * Histogram::kSub) == 2 * Histogram::kSub + 1);
    CHECK(Histogram::Index(Histogram::kMaxValue) == Histogram::kBuckets - 1);
    CHECK(Histogram::UpperBound(Histogram::kBuckets - 1) == Histogram::kMaxValue);
  }

  TEST_CASE("quantiles match an exact sort within the bucket resolution") {
    std::mt19937_64 rng(7);
    // A latency-like mix: a log-normal body around 300 us and a tail of slow ones.
    std::lognormal_distribution<double> body(std::log(300.0), 0.6);
    std::vector<uint64_t> v;
    Histogram h;
    for (int i = 0; i < 100000; ++i) {
      uint64_t x = static_cast<uint64_t>(body(rng));
      if (i % 500 == 0) x = 20000 + rng() % 200000;
      v.push_back(x);
      h.Record(x);
    }
    CHECK(h.Count() == v.size());
    CHECK(h.Max() == *std::max_element(v.begin(), v.end()));
    double sum = 0;
    for (uint64_t x : v) sum += static_cast<double>(x);
    CHECK(h.Mean() == doctest::Approx(sum / static_cast<double>(v.size())));
    for (double q : {0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0}) {
      const uint64_t exact = exact_quantile(v, q);
      const uint64_t got = h.Quantile(q);
      INFO("q=", q, " exact=", exact, " histogram=", got);
      CHECK(got >= exact);  // an upper bound of the true value ...
      CHECK(static_cast<double>(got - exact) <= static_cast<double>(exact) / Histogram::kSub + 1.0);  // ... within 0.8%
    }
    CHECK(h.Quantile(1.0) == h.Max());  // capped at the exact maximum
  }

  TEST_CASE("merging equals recording everything in one") {
    std::mt19937_64 rng(99);
    Histogram a, b, all;
    for (int i = 0; i < 5000; ++i) {
      const uint64_t x = rng() % 100000;
      (i % 3 ? a : b).Record(x);
      all.Record(x);
    }
    a.Merge(b);
    CHECK(a.Count() == all.Count());
    CHECK(a.Max() == all.Max());
    CHECK(a.Mean() == doctest::Approx(all.Mean()));
    for (double q : {0.5, 0.9, 0.99, 0.999}) CHECK(a.Quantile(q) == all.Quantile(q));
  }

  TEST_CASE("values above kMaxValue are clamped, not lost") {
    Histogram h;
    h.Record(UINT64_MAX);
    h.Record(1);
    CHECK(h.Count() == 2);
    CHECK(h.Max() == Histogram::kMaxValue);
    CHECK(h.Quantile(1.0) == Histogram::kMaxValue);
    CHECK(h.Quantile(0.5) == 1);
  }
}
