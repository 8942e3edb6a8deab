#include "gw/shm/table.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace gw::shm {

namespace {
constexpr const char* kMethodNames[kMethodCount] = {"round_robin", "chash",         "hash",   "crc32_mod", "maglev",
                                                    "least_conn",  "least_request", "random", "ewma"};
}  // namespace

bool parse_method(std::string_view name, Method& out) {
  for (int i = 0; i < kMethodCount; ++i)
    if (name == kMethodNames[i]) {
      out = static_cast<Method>(i);
      return true;
    }
  return false;
}

const char* method_name(Method m) {
  auto i = static_cast<int>(m);
  return i < kMethodCount ? kMethodNames[i] : "unknown";
}

std::string method_names() {
  std::string out;
  for (int i = 0; i < kMethodCount; ++i) out += (i ? ", " : "") + std::string(kMethodNames[i]);
  return out;
}

std::string check_name(std::string_view s) {
  if (s.empty()) return "must not be empty";
  if (s.size() >= kNameCap) return fmt::format("longer than {} bytes", kNameCap - 1);
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-' || c == ':';
    if (!ok) return "may contain only letters, digits and . _ - :";
  }
  return {};
}

void set_name(char (&dst)[kNameCap], std::string_view src) noexcept {
  std::memset(dst, 0, kNameCap);
  std::memcpy(dst, src.data(), std::min(src.size(), kNameCap - 1));
}

size_t Table::bytes_for(const Caps& c) noexcept {
  return sizeof(TableHeader) + sizeof(UpstreamRecord) * c.max_upstreams + sizeof(PoolRecord) * c.max_pools +
         sizeof(HostRecord) * c.max_hosts;
}

Table::Table(Caps caps) : caps_(caps), words_(bytes_for(caps) / 8, 0) {
  reinterpret_cast<TableHeader*>(words_.data())->next_tag = 1;  // the vector is never empty
}

UpstreamRecord* Table::ups_() const noexcept {
  auto* base = reinterpret_cast<char*>(const_cast<uint64_t*>(words_.data()));
  return reinterpret_cast<UpstreamRecord*>(base + sizeof(TableHeader));
}
PoolRecord* Table::pools_() const noexcept {
  return reinterpret_cast<PoolRecord*>(ups_() + caps_.max_upstreams);
}
HostRecord* Table::hosts_() const noexcept {
  return reinterpret_cast<HostRecord*>(pools_() + caps_.max_pools);
}

void Table::clear() noexcept {
  std::fill(words_.begin(), words_.end(), 0);
  header().next_tag = 1;
}

int Table::find_upstream(std::string_view name) const noexcept {
  auto u = upstreams();
  for (size_t i = 0; i < u.size(); ++i)
    if (name_of(u[i].name) == name) return static_cast<int>(i);
  return -1;
}

int Table::find_pool(int upstream, std::string_view id) const noexcept {
  auto p = pools();
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i].upstream == upstream && name_of(p[i].id) == id) return static_cast<int>(i);
  return -1;
}

int Table::find_host(int pool, std::string_view id) const noexcept {
  auto h = hosts();
  for (size_t i = 0; i < h.size(); ++i)
    if (h[i].pool == pool && name_of(h[i].id) == id) return static_cast<int>(i);
  return -1;
}

std::vector<int> Table::pool_hosts(int pool) const {
  std::vector<int> out;
  auto h = hosts();
  for (size_t i = 0; i < h.size(); ++i)
    if (h[i].pool == pool) out.push_back(static_cast<int>(i));
  return out;
}

std::string Table::pool_path(int pool) const {
  const auto& p = pools()[static_cast<size_t>(pool)];
  return fmt::format("{}/{}", name_of(upstreams()[p.upstream].name), name_of(p.id));
}

std::string Table::host_path(int host) const {
  const auto& h = hosts()[static_cast<size_t>(host)];
  return fmt::format("{}/{}", pool_path(h.pool), name_of(h.id));
}

int Table::add_upstream(const UpstreamRecord& rec) {
  std::string_view name = name_of(rec.name);
  if (auto why = check_name(name); !why.empty()) throw TableError(fmt::format("upstream name \"{}\" {}", name, why));
  if (find_upstream(name) >= 0) throw TableError(fmt::format("upstream \"{}\" already exists", name));
  if (header().n_upstreams >= caps_.max_upstreams)
    throw TableError(fmt::format("upstream table is full (shm.max_upstreams = {})", caps_.max_upstreams));
  ups_()[header().n_upstreams] = rec;
  return static_cast<int>(header().n_upstreams++);
}

int Table::add_pool(int upstream, std::string_view id, int32_t priority, Method method) {
  if (auto why = check_name(id); !why.empty()) throw TableError(fmt::format("pool id \"{}\" {}", id, why));
  if (find_pool(upstream, id) >= 0)
    throw TableError(fmt::format("pool {}/{} already exists", name_of(upstreams()[static_cast<size_t>(upstream)].name), id));
  if (header().n_pools >= caps_.max_pools)
    throw TableError(fmt::format("pool table is full (shm.max_pools = {})", caps_.max_pools));
  PoolRecord& p = pools_()[header().n_pools];
  p = PoolRecord{};
  set_name(p.id, id);
  p.priority = priority;
  p.upstream = static_cast<uint16_t>(upstream);
  p.method = static_cast<uint8_t>(method);
  return static_cast<int>(header().n_pools++);
}

void Table::remove_pool(int pool) {
  auto n = pool_hosts(pool).size();
  if (n != 0)
    throw TableError(fmt::format("pool {} still has {} host(s); remove them first", pool_path(pool), n));
  PoolRecord* p = pools_();
  std::copy(p + pool + 1, p + header().n_pools, p + pool);
  --header().n_pools;
  for (auto& h : hosts())
    if (h.pool > pool) --h.pool;
}

int Table::add_host(int pool, std::string_view id, const core::SockAddr& addr, uint32_t weight) {
  if (auto why = check_name(id); !why.empty()) throw TableError(fmt::format("host id \"{}\" {}", id, why));
  if (find_host(pool, id) >= 0) throw TableError(fmt::format("host {}/{} already exists", pool_path(pool), id));
  if (weight > kMaxWeight) throw TableError(fmt::format("weight must be 0..{}, got {}", kMaxWeight, weight));
  if (header().n_hosts >= caps_.max_hosts)
    throw TableError(fmt::format("host table is full (shm.max_hosts = {})", caps_.max_hosts));
  HostRecord& h = hosts_()[header().n_hosts];
  h = HostRecord{};
  set_name(h.id, id);
  h.addr = addr;
  h.pool = static_cast<uint16_t>(pool);
  h.weight = weight;
  return static_cast<int>(header().n_hosts++);
}

void Table::remove_host(int host) {
  HostRecord* h = hosts_();
  std::copy(h + host + 1, h + header().n_hosts, h + host);
  --header().n_hosts;
}

}  // namespace gw::shm
