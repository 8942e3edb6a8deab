#include "gw/balance/balancer.hpp"

#include <cstring>
#include <unordered_map>
#include <utility>

namespace gw::balance {

namespace {

// FNV-1a over what a pool's derived structures are built from. Equal pools
// give equal signatures; a different pool, a different one but for a 2^-64
// chance.
struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void bytes(const void* p, size_t n) noexcept {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
  template <typename T>
  void value(const T& v) noexcept {
    bytes(&v, sizeof(v));
  }
};

// Two signatures of a pool, from one pass over its hosts:
//  - `built`: what its derived structures are built from, host table indices
//    included (rings and schedules hold them);
//  - `same`: the pool itself (upstream and pool id, method, its hosts' slots,
//    tags, ids, addresses and weights), without indices: it stays equal when
//    hosts of other pools come or go and this pool's move in the table.
struct Signatures {
  uint64_t built;
  uint64_t same;
};

Signatures signature(const Snapshot& s, const PoolView& p) noexcept {
  Fnv built, same;
  auto both = [&](const void* b, size_t n) noexcept {
    built.bytes(b, n);
    same.bytes(b, n);
  };
  const shm::PoolRecord& pr = s.table().pools()[p.pool];
  const char* upstream = s.table().upstreams()[pr.upstream].name;
  same.bytes(upstream, std::strlen(upstream) + 1);
  same.bytes(pr.id, std::strlen(pr.id) + 1);
  const auto method = static_cast<uint32_t>(p.method);
  both(&method, sizeof(method));
  both(&p.count, sizeof(p.count));
  auto hosts = s.table().hosts();
  for (uint32_t i : s.hosts(p)) {
    const shm::HostRecord& h = hosts[i];
    built.value(i);  // rings and schedules hold host indices
    same.value(h.slot);
    same.value(h.tag);
    both(&h.weight, sizeof(h.weight));
    both(h.id, std::strlen(h.id));
    const std::string a = h.addr.to_string();
    both(a.data(), a.size());
  }
  return {built.h ? built.h : 1, same.h ? same.h : 1};  // 0 marks a state taken (rebuild)
}

}  // namespace

void Balancer::rebuild(const Snapshot& s) {
  // A change to one host (a gwctl down, a rule, a weight elsewhere) used to
  // rebuild every ring and schedule in every worker: 0.2-0.3 s per change in
  // the reactor thread at 100 hosts of weight 1000. Pools whose inputs did not
  // change keep what they had.
  auto all = s.all_pools();
  std::unordered_map<uint64_t, size_t> old_by_sig, old_by_same;
  for (size_t i = 0; i < pools_.size(); ++i) {
    if (pools_[i].sig != 0) old_by_sig.emplace(pools_[i].sig, i);
    if (pools_[i].same != 0) old_by_same.emplace(pools_[i].same, i);
  }
  std::vector<PoolState> next(all.size());
  auto hosts = s.table().hosts();
  last_rebuilt_ = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    const PoolView& p = all[i];
    PoolState& st = next[i];
    const Signatures sig = signature(s, p);
    if (auto it = old_by_sig.find(sig.built); it != old_by_sig.end() && pools_[it->second].sig != 0) {
      st = std::move(pools_[it->second]);
      st.same = sig.same;
      pools_[it->second].sig = pools_[it->second].same = 0;
      old_by_sig.erase(it);  // (two equal pools: each gets its own)
      continue;
    }
    ++last_rebuilt_;
    st.sig = sig.built;
    st.same = sig.same;
    if (auto it = old_by_same.find(sig.same); it != old_by_same.end() && pools_[it->second].sig != 0) {
      // The same pool, moved in the host table (hosts of a pool before it
      // came or went): its structures are rebuilt on the new indices, and its
      // place in the round-robin sequence carries on, as if nothing happened.
      st.local_ticket = pools_[it->second].local_ticket;
      pools_[it->second].sig = pools_[it->second].same = 0;
      old_by_same.erase(it);
    } else {
      // Its method, hosts or weights changed: its hosts' smooth WRR state was
      // built on what the pool was. Kept, the old weights' current values
      // would decide the next hundreds of picks (a host lowered from 1000 to 1
      // owes about as many picks as it took), and a raised weight would climb
      // one per pick, as after a failure. The pool starts again, as nginx's
      // peers do on a reload.
      for (uint32_t h : s.hosts(p)) rr_.forget(hosts[h].slot);
    }
    if (p.method == shm::Method::chash) st.ring.build(hosts, s.hosts(p));
    if (p.method == shm::Method::maglev) st.maglev.build(hosts, s.hosts(p));
    if (p.method == shm::Method::round_robin) st.schedule = RoundRobin::build_schedule(hosts, s.hosts(p));
    if (p.method == shm::Method::least_request) st.weights.build(hosts, s.hosts(p));
  }
  pools_ = std::move(next);
}

}  // namespace gw::balance
