#pragma once
// GET /metrics: the Prometheus text exposition format, version 0.0.4.
//
//   # HELP gw_listener_accepted_total Connections accepted.
//   # TYPE gw_listener_accepted_total counter
//   gw_listener_accepted_total{listener="web",protocol="http"} 12
//
// PromWriter is the format (pure, unit-tested): every family once, with its
// HELP and TYPE lines and then all its samples; label values escaped (\\, \",
// \n); histograms as cumulative _bucket{le=...} lines ending in le="+Inf",
// then _sum and _count. metrics_text() collects the gateway's numbers from
// shm (summing the per-worker rows) and writes them.
//
// Boundary code (the admin process): allocates.

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>

#include "gw/config/config.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/table.hpp"

namespace gw::admin {

struct Label {
  std::string_view name;
  std::string_view value;
};

/// A label value as the text format wants it: \ → \\, " → \", newline → \n.
std::string prom_escape_label(std::string_view v);
/// HELP text: \ → \\, newline → \n.
std::string prom_escape_help(std::string_view v);
/// A sample value: integers as integers, "+Inf", "-Inf", "NaN", else the
/// shortest text that reads back as the same double.
std::string prom_value(double v);

class PromWriter {
 public:
  /// Starts a family: its HELP and TYPE lines (type: counter, gauge, histogram, untyped).
  void family(std::string_view name, std::string_view type, std::string_view help);
  /// name{labels} value.
  void sample(std::string_view name, std::span<const Label> labels, uint64_t value);
  void sample(std::string_view name, uint64_t value) { sample(name, std::span<const Label>(), value); }
  void sample(std::string_view name, std::initializer_list<Label> labels, uint64_t value) {
    sample(name, std::span<const Label>(labels.begin(), labels.size()), value);
  }
  void sample_double(std::string_view name, std::span<const Label> labels, double value);
  /// A histogram series: `bounds` are the finite upper bounds (ascending),
  /// `counts` has bounds.size() + 1 entries, NOT cumulative (the last counts
  /// samples above every bound); `sum` in the histogram's unit.
  void histogram(std::string_view name, std::span<const Label> labels, std::span<const double> bounds,
                 std::span<const uint64_t> counts, double sum);

  const std::string& text() const noexcept { return out_; }

 private:
  void series(std::string_view name, std::string_view suffix, std::span<const Label> labels,
              const Label* extra = nullptr);
  std::string out_;
};

/// Every metric of the gateway (see the README's list). `cfg` is the config
/// the workers run (listener indexes and protocols); `t` the published table.
std::string metrics_text(const shm::Segment& seg, const shm::Table& t, const config::Config& cfg);

}  // namespace gw::admin
