// gwd: the gateway master. `gwd -c FILE` runs in the foreground (as systemd
// expects); `gwd -t -c FILE` checks the configuration.

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "gw/config/config.hpp"
#include "gw/core/log.hpp"
#include "gw/process/master.hpp"

int main(int argc, char** argv) {
  CLI::App app{"gwd: load-balancing gateway (master process)"};
  std::string config_path = "conf/gateway.json";
  bool test = false, foreground = false;
  app.add_option("-c,--config", config_path, "configuration file")->capture_default_str();
  app.add_flag("-t,--test", test, "check the configuration, print ok or every error, and exit");
  app.add_flag("--foreground", foreground, "stay attached to the terminal (the default; for systemd and scripts)");
  app.set_version_flag("-V,--version", "gwd 0.1.0");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  gw::config::LoadResult r = gw::config::load_file(config_path);
  if (!r.ok()) {
    for (const auto& e : r.errors) fmt::print(stderr, "{}: {}\n", config_path, e);
    fmt::print(stderr, "{}: {} error(s)\n", config_path, r.errors.size());
    return 1;
  }
  if (test) {
    fmt::print("ok\n");
    return 0;
  }
  try {
    gw::core::log_set_role("master");
    gw::core::log_set_level(r.config.log_level);
    gw::core::log_open(r.config.log_file);
    return gw::process::run_master(r.config, std::vector<std::string>(argv, argv + argc));
  } catch (const std::exception& e) {
    GW_LOG_ERROR("{}", e.what());
    // The log may be a file; the operator starting gwd must see why it failed.
    if (!r.config.log_file.empty()) fmt::print(stderr, "gwd: {}\n", e.what());
    return 1;
  }
}
