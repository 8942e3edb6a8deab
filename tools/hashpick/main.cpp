// gw-hashpick: prints the host gw's balancer picks for each key read from
// stdin, with every host up. Used to compare gw's hash methods with nginx's
// (tests/integration/test_nginx_hash.py) and to preview a migration.
//
//   gw-hashpick --method chash --host a=127.0.0.1:8081:2 --host b=127.0.0.1:8082 < keys
//   → one line per key: KEY<TAB>HOST_ID

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <charconv>
#include <iostream>
#include <string>

#include "gw/balance/balancer.hpp"
#include "gw/core/address.hpp"

int main(int argc, char** argv) {
  CLI::App app{"gw-hashpick: which host gw picks for each key on stdin"};
  std::string method = "chash";
  std::vector<std::string> specs;
  app.add_option("--method", method, "balancing method")->capture_default_str();
  app.add_option("--host", specs, "ID=IP:PORT[:WEIGHT], in pool order")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // A usage error exits 2, as gwd's, gwctl's and this tool's own checks do (CLI11's
    // codes, 106 for an unknown option, mean nothing to a caller).
    return app.exit(e) == 0 ? 0 : 2;
  }

  gw::shm::Method m;
  if (!gw::shm::parse_method(method, m)) {
    fmt::print(stderr, "gw-hashpick: unknown method \"{}\" (known: {})\n", method, gw::shm::method_names());
    return 2;
  }
  gw::shm::Table t({1, 1, static_cast<uint32_t>(specs.size())});
  gw::shm::UpstreamRecord u{};
  gw::shm::set_name(u.name, "u");
  t.add_upstream(u);
  t.add_pool(0, "p", 0, m);
  try {
    for (const auto& spec : specs) {
      auto eq = spec.find('=');
      if (eq == std::string::npos) throw std::runtime_error("expected ID=IP:PORT[:WEIGHT], got " + spec);
      std::string id = spec.substr(0, eq), rest = spec.substr(eq + 1), why;
      uint32_t weight = 1;
      gw::core::SockAddr addr;
      if (!gw::core::parse_address(rest, addr, why)) {
        // IP:PORT:WEIGHT. Without a weight ("127.0.0.1:99999": no ':' after
        // the IP in what is left) the address's own error is the one to give,
        // not the weight's.
        auto colon = rest.rfind(':');
        if (colon == std::string::npos) throw std::runtime_error(spec + ": " + why);
        const std::string ip_port = rest.substr(0, colon);
        const auto c2 = ip_port.rfind(':'), br = ip_port.rfind(']');
        const bool has_port = c2 != std::string::npos && (br == std::string::npos || c2 > br);
        std::string why_ip;
        if (!gw::core::parse_address(ip_port, addr, why_ip))
          throw std::runtime_error(spec + ": " + (has_port ? why_ip : why));
        // The whole field, 0..1000 as in a config (std::stoul took "2x" as 2
        // and said only "stoul" for "x").
        const std::string w = rest.substr(colon + 1);
        auto [end, ec] = std::from_chars(w.data(), w.data() + w.size(), weight);
        if (w.empty() || ec != std::errc() || end != w.data() + w.size() || weight > gw::shm::kMaxWeight)
          throw std::runtime_error(
              fmt::format("{}: the weight must be an integer 0..{}, got \"{}\"", spec, gw::shm::kMaxWeight, w));
      }
      int h = t.add_host(0, id, addr, weight);
      t.hosts()[static_cast<size_t>(h)].slot = static_cast<uint32_t>(h);
      t.hosts()[static_cast<size_t>(h)].tag = static_cast<uint32_t>(h) + 1;
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "gw-hashpick: {}\n", e.what());
    return 2;
  }
  gw::balance::Snapshot snap;
  snap.build(t);
  gw::balance::Balancer b(t.caps().max_hosts, 1);
  b.rebuild(snap);
  std::string key;
  while (std::getline(std::cin, key)) {
    int h = b.pick(
        snap, snap.upstreams()[0], key, [](uint32_t) { return true; }, [](uint32_t) { return uint64_t{0}; });
    fmt::print("{}\t{}\n", key, h < 0 ? "-" : std::string(gw::shm::name_of(t.hosts()[static_cast<size_t>(h)].id)));
  }
  return 0;
}
