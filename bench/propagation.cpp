// Propagation benchmark: the time from the start of a table commit (what gwctl
// does, without the state file's fsync) to the first connection each worker
// routes with the new table.
//
// Attaches to a running gwd, keeps a stream of client connections going to
// one of its listeners from several threads, and in each round commits a
// change (a host's weight toggles 1 <-> 2) and waits until every worker has
// recorded, in shm, the monotonic time of its first pick with that
// generation. Prints the median, p90, p99 and max over all (round, worker)
// pairs, in microseconds.

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "gw/core/address.hpp"
#include "gw/core/clock.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/writer.hpp"

namespace {
int run(int argc, char** argv) {
  CLI::App app{"gw-propagation: commit-to-routing latency of table changes"};
  std::string shm_name = "gw", target, pool_path = "app/primary", host = "a";
  int rounds = 200, threads = 4;
  bool json = false;
  app.add_option("--shm", shm_name, "shm name of the running gateway");
  app.add_option("--connect", target, "listener address to drive connections to")->required();
  app.add_option("--pool", pool_path, "UPSTREAM/POOL holding --host");
  app.add_option("--host", host, "host whose weight is toggled each round");
  app.add_option("--rounds", rounds, "changes to commit")->check(CLI::Range(1, 1000000));
  app.add_option("--threads", threads, "client connection threads")->check(CLI::Range(1, 256));
  app.add_flag("--json", json, "print one JSON object");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {  // usage errors exit 2, as the other tools' do
    return app.exit(e) == 0 ? 0 : 2;
  }

  gw::core::SockAddr addr;
  std::string why;
  if (!gw::core::parse_address(target, addr, why)) {
    fmt::print(stderr, "gw-propagation: --connect: {}\n", why);
    return 2;
  }
  auto slash = pool_path.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == pool_path.size()) {
    fmt::print(stderr, "gw-propagation: --pool: expected UPSTREAM/POOL, got \"{}\"\n", pool_path);
    return 2;
  }
  std::string up = pool_path.substr(0, slash), pool = pool_path.substr(slash + 1);
  gw::shm::Segment seg = gw::shm::Segment::attach(shm_name);
  gw::shm::Writer writer(seg);
  writer.set_persist(false);  // measure the shm path, not the disk's fsync

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> conns{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < threads; ++t)
    clients.emplace_back([&, t] {
      // Distinct source addresses spread the 4-tuples over the SO_REUSEPORT sockets.
      sockaddr_in src{};
      src.sin_family = AF_INET;
      src.sin_addr.s_addr = htonl(0x7f000002u + static_cast<uint32_t>(t));
      sockaddr_storage dst;
      socklen_t dlen = addr.to_sockaddr(dst);
      while (!stop.load(std::memory_order_relaxed)) {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        ::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src));
        linger lg{1, 0};  // close with RST: no TIME_WAIT pile-up on the client side
        ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        if (::connect(fd, reinterpret_cast<sockaddr*>(&dst), dlen) == 0) conns.fetch_add(1);
        ::close(fd);
        ::usleep(200);
      }
    });

  std::vector<double> samples;
  uint32_t workers = 0;
  for (int r = 0; r < rounds; ++r) {
    std::vector<uint32_t> live;
    for (uint32_t w = 0; w < gw::shm::kMaxWorkers; ++w)
      if (seg.worker(w).pid.load() > 0) live.push_back(w);
    workers = static_cast<uint32_t>(live.size());
    // From the start of the commit: a worker may pick the change up (a
    // connection, its housekeeping tick) before commit() has returned, which
    // a clock read after it would miss.
    const uint64_t start_ns = gw::core::monotonic_ns();
    uint64_t gen = writer.commit([&](gw::shm::Table& t, std::vector<std::string>&) {
      int u = t.find_upstream(up);
      int p = u < 0 ? -1 : t.find_pool(u, pool);
      int h = p < 0 ? -1 : t.find_host(p, host);
      if (h < 0) throw gw::shm::TableError(fmt::format("unknown host {}/{}", pool_path, host));
      auto& rec = t.hosts()[static_cast<size_t>(h)];
      rec.weight = rec.weight == 1 ? 2 : 1;
    });
    const uint64_t deadline = gw::core::monotonic_ns() + 5'000'000'000ull;
    for (uint32_t w : live) {
      auto& wr = seg.worker(w);
      for (;;) {
        uint64_t applied = wr.applied_ns.load(std::memory_order_acquire);
        if (wr.generation.load(std::memory_order_acquire) >= gen && applied >= start_ns) {
          samples.push_back(static_cast<double>(applied - start_ns) / 1000.0);
          break;
        }
        if (gw::core::monotonic_ns() > deadline) {
          fmt::print(stderr, "gw-propagation: worker {} did not route with generation {} within 5 s\n", w, gen);
          stop = true;
          for (auto& c : clients) c.join();
          return 1;
        }
        std::this_thread::yield();
      }
    }
    if (r % 50 == 0) fmt::print(stderr, "round {}/{}\n", r, rounds);
    ::usleep(5000);
  }
  stop = true;
  for (auto& c : clients) c.join();
  if (samples.empty()) {
    fmt::print(stderr, "gw-propagation: no change was seen by a routed connection\n");
    return 1;
  }
  std::sort(samples.begin(), samples.end());
  auto pct = [&](double q) { return samples[std::min(samples.size() - 1, static_cast<size_t>(q * samples.size()))]; };
  if (json)
    fmt::print(
        "{{\"rounds\": {}, \"workers\": {}, \"samples\": {}, \"median_us\": {:.1f}, \"p90_us\": {:.1f}, "
        "\"p99_us\": {:.1f}, \"max_us\": {:.1f}, \"connections\": {}}}\n",
        rounds, workers, samples.size(), pct(0.5), pct(0.9), pct(0.99), samples.back(), conns.load());
  else
    fmt::print(
        "propagation over {} rounds x {} workers: median {:.1f} us, p90 {:.1f} us, p99 {:.1f} us, max {:.1f} us "
        "({} client connections)\n",
        rounds, workers, pct(0.5), pct(0.9), pct(0.99), samples.back(), conns.load());
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // no segment, another ABI, an unknown host
    fmt::print(stderr, "gw-propagation: {}\n", e.what());
    return 1;
  }
}
