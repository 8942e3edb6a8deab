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

uint64_t signature(const Snapshot& s, const PoolView& p) noexcept {
  Fnv f;
  f.value(static_cast<uint32_t>(p.method));
  f.value(p.count);
  auto hosts = s.table().hosts();
  for (uint32_t i : s.hosts(p)) {
    const shm::HostRecord& h = hosts[i];
    f.value(i);  // rings and schedules hold host indices
    f.value(h.weight);
    f.bytes(h.id, std::strlen(h.id));
    const std::string a = h.addr.to_string();
    f.bytes(a.data(), a.size());
  }
  return f.h;
}

}  // namespace

void Balancer::rebuild(const Snapshot& s) {
  // A change to one host (a gwctl down, a rule, a weight elsewhere) used to
  // rebuild every ring and schedule in every worker: 0.2-0.3 s per change in
  // the reactor thread at 100 hosts of weight 1000. Pools whose inputs did not
  // change keep what they had.
  auto all = s.all_pools();
  std::unordered_map<uint64_t, size_t> old_by_sig;
  for (size_t i = 0; i < pools_.size(); ++i)
    if (pools_[i].sig != 0) old_by_sig.emplace(pools_[i].sig, i);
  std::vector<PoolState> next(all.size());
  auto hosts = s.table().hosts();
  last_rebuilt_ = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    const PoolView& p = all[i];
    PoolState& st = next[i];
    const uint64_t sig = signature(s, p);
    if (auto it = old_by_sig.find(sig); it != old_by_sig.end()) {
      st = std::move(pools_[it->second]);
      pools_[it->second].sig = 0;
      old_by_sig.erase(it);  // (two equal pools: each gets its own)
      continue;
    }
    ++last_rebuilt_;
    st.sig = sig ? sig : 1;
    // Its hosts' smooth WRR state was built on what the pool was: kept, the
    // old weights' current values would decide the next hundreds of picks
    // (a host lowered from 1000 to 1 owes about as many picks as it took),
    // and a raised weight would climb one per pick, as after a failure. The
    // pool starts again, as nginx's peers do on a reload.
    for (uint32_t h : s.hosts(p)) rr_.forget(hosts[h].slot);
    if (p.method == shm::Method::chash) st.ring.build(hosts, s.hosts(p));
    if (p.method == shm::Method::maglev) st.maglev.build(hosts, s.hosts(p));
    if (p.method == shm::Method::round_robin) st.schedule = RoundRobin::build_schedule(hosts, s.hosts(p));
    if (p.method == shm::Method::least_request) st.weights.build(hosts, s.hosts(p));
  }
  pools_ = std::move(next);
}

}  // namespace gw::balance
