#pragma once
// A change whose result is self-checking: after it, the table holds
// (gen % 7) + 1 hosts, each with weight and port derived from the generation.
// A reader that sees any mix of two tables fails check_table().

#include <string>

#include "gw/shm/table.hpp"

namespace gw::testing {

inline void self_checking_change(shm::Table& t, std::vector<std::string>&) {
  if (t.upstreams().empty()) {
    shm::UpstreamRecord r{};
    shm::set_name(r.name, "app");
    t.add_upstream(r);
    t.add_pool(0, "p", 0, shm::Method::round_robin);
  }
  const uint64_t gen = t.header().generation + 1;
  while (!t.hosts().empty()) t.remove_host(0);
  const uint32_t n = static_cast<uint32_t>(gen % 7) + 1;
  for (uint32_t i = 0; i < n; ++i) {
    core::SockAddr a;
    a.family = AF_INET;
    a.port = static_cast<uint16_t>(gen % 60000 + 1);
    t.add_host(0, "h" + std::to_string(i), a, static_cast<uint32_t>(gen % 1000));
  }
  // The rule sections too, when the table has room for them.
  if (t.caps().max_routes == 0 || t.caps().max_rules == 0 || t.caps().max_rule_cidrs == 0) return;
  if (t.routes().empty()) t.add_route("web", "root");
  while (!t.rules().empty()) t.remove_rule(0);
  shm::RuleSpec r;
  r.id = "r" + std::to_string(gen % 97);
  r.upstream = "app";
  r.percent_bp = static_cast<int32_t>(gen % 10001);
  core::Cidr c;
  c.family = AF_INET;
  c.prefix = static_cast<uint8_t>(gen % 33);
  r.cidrs.push_back(c);
  t.add_rule(0, r);
}

/// Empty if `t` is a table some self_checking_change produced, else why not.
inline std::string check_table(const shm::Table& t) {
  const uint64_t gen = t.header().generation;
  if (gen == 0) return t.hosts().empty() ? "" : "hosts in generation 0";
  if (t.hosts().size() != gen % 7 + 1) return "host count does not match generation " + std::to_string(gen);
  for (const auto& h : t.hosts()) {
    if (h.weight != gen % 1000) return "weight does not match generation " + std::to_string(gen);
    if (h.addr.port != gen % 60000 + 1) return "port does not match generation " + std::to_string(gen);
  }
  if (t.caps().max_routes == 0 || t.caps().max_rules == 0 || t.caps().max_rule_cidrs == 0) return "";
  if (t.rules().size() != 1 || t.cidrs().size() != 1)
    return "rule count does not match generation " + std::to_string(gen);
  const auto& r = t.rules()[0];
  if (shm::name_of(r.id) != "r" + std::to_string(gen % 97) || r.percent_bp != gen % 10001 ||
      t.rule_cidrs(r)[0].prefix != gen % 33)
    return "rule does not match generation " + std::to_string(gen);
  return "";
}

}  // namespace gw::testing
