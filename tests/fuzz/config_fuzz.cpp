// libFuzzer target for the config loader (src/config/): arbitrary bytes as a
// config file. Checked (abort on failure):
//   - load_string never throws and never crashes (ASan/UBSan under libFuzzer);
//   - every error is one non-empty line;
//   - a config that loads without errors loads again to the same result (the
//     loader is deterministic), has at least one listener and one upstream,
//     listener and upstream names that are unique, and every listener's
//     upstream names an upstream of the config.
// tests/fuzz/corpus/config holds the seeds: conf/gateway.json, configs of the
// README and tests, and broken variants.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "gw/config/config.hpp"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "config_fuzz: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 1 << 16) return 0;  // configs are small; keep runs fast
  const std::string text(reinterpret_cast<const char*>(data), size);
  gw::config::LoadResult r;
  try {
    r = gw::config::load_string(text, "fuzz.json");
  } catch (...) {
    fail("load_string threw");
  }
  for (const auto& e : r.errors)
    if (e.empty() || e.find('\n') != std::string::npos) fail("an error is empty or spans lines");
  if (!r.errors.empty()) return 0;

  const gw::config::Config& c = r.config;
  if (c.listeners.empty() || c.upstreams.empty()) fail("a loaded config without listeners or upstreams");
  std::set<std::string> listeners, upstreams;
  for (const auto& u : c.upstreams)
    if (!upstreams.insert(u.name).second) fail("duplicate upstream names accepted");
  for (const auto& l : c.listeners) {
    if (!listeners.insert(l.name).second) fail("duplicate listener names accepted");
    if (!l.upstream.empty() && !upstreams.count(l.upstream)) fail("a listener names an unknown upstream");
  }
  const gw::config::LoadResult again = gw::config::load_string(text, "fuzz.json");
  if (!again.errors.empty() || again.config.listeners.size() != c.listeners.size() ||
      again.config.upstreams.size() != c.upstreams.size() || again.config.workers != c.workers)
    fail("the same bytes loaded differently");
  return 0;
}
