// gwd: the gateway master. `gwd -c FILE` runs in the foreground (as systemd
// expects); `gwd -t -c FILE` checks the configuration.

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "gw/config/config.hpp"
#include "gw/core/cli.hpp"
#include "gw/core/fd.hpp"
#include "gw/core/log.hpp"
#include "gw/core/text.hpp"
#include "gw/process/logger.hpp"
#include "gw/process/master.hpp"

namespace {

// `gwd -t` also checks the files gwd would open at start (nginx -t opens its
// logs): a config that passes the test and then fails to start is worse than
// one that fails the test. Nothing is created. `what` names the key.
void check_writable(const std::string& what, const std::string& path, bool regular_only,
                    std::vector<std::string>& errors) {
  if (path.empty()) return;
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) errors.push_back(fmt::format("{}: {} is a directory", what, path));
    else if (regular_only && !S_ISREG(st.st_mode))
      errors.push_back(fmt::format("{}: {} is not a regular file", what, path));
    else if (::access(path.c_str(), W_OK) != 0)
      errors.push_back(fmt::format("{}: cannot write {}: {}", what, path, std::strerror(errno)));
    if (!regular_only) return;  // a log: written in place
  } else if (errno != ENOENT) {
    errors.push_back(fmt::format("{}: {}: {}", what, path, std::strerror(errno)));
    return;
  }
  // Created (logs) or replaced by a rename (the state file) in its directory,
  // which gwd creates for the state file: then its nearest existing ancestor
  // must take it.
  std::filesystem::path d = std::filesystem::path(path).parent_path();
  if (d.empty()) d = ".";
  if (regular_only) {
    std::error_code ec;
    while (!std::filesystem::exists(d, ec) && d.has_parent_path() && d != d.parent_path()) d = d.parent_path();
  }
  const std::string dir = d.string();
  struct stat ds {};
  if (::stat(dir.c_str(), &ds) != 0)
    errors.push_back(fmt::format("{}: the directory {} of {}: {}", what, dir, path, std::strerror(errno)));
  else if (!S_ISDIR(ds.st_mode)) errors.push_back(fmt::format("{}: {} is not a directory", what, dir));
  else if (::access(dir.c_str(), W_OK | X_OK) != 0)
    errors.push_back(fmt::format("{}: cannot write in {}: {}", what, dir, std::strerror(errno)));
}

}  // namespace

int main(int argc, char** argv) {
  if (!gw::core::ensure_std_fds()) return 1;  // (nowhere to say why)
  CLI::App app{"gwd: load-balancing gateway (master process)"};
  std::string config_path = "conf/gateway.json";
  bool test = false, foreground = false;
  app.add_option("-c,--config", config_path, "configuration file")->capture_default_str();
  app.add_flag("-t,--test", test, "check the configuration, print ok or every error, and exit");
  app.add_flag("--foreground", foreground, "stay attached to the terminal (the default; for systemd and scripts)");
  app.set_version_flag("-V,--version", fmt::format("gwd {}", gw::core::kVersion));
  if (auto rc = gw::core::parse_command_line(app, "gwd", argc, argv)) return *rc;

  // Each message is one line, whatever the path or a quoted value holds.
  const std::string shown_path = gw::core::one_line(config_path);
  gw::config::LoadResult r = gw::config::load_file(config_path);
  if (!r.ok()) {
    for (const auto& e : r.errors) {
      fmt::print(stderr, "{}: {}\n", shown_path, e);
      gw::process::tell_old_master(fmt::format("{}: {}", shown_path, e));
    }
    fmt::print(stderr, "{}: {} error(s)\n", shown_path, r.errors.size());
    return 1;
  }
  if (test) {
    std::vector<std::string> errors;
    // log_file is opened as a start opens it (a FIFO that no process reads
    // fails it), unless it is missing: then created in its directory.
    if (!r.config.log_file.empty()) {
      try {
        const gw::core::UniqueFd f(gw::core::log_open_file(r.config.log_file, false));
        if (!f) check_writable("log_file", r.config.log_file, false, errors);
      } catch (const std::exception& e) {
        errors.push_back(fmt::format("log_file: {}", e.what()));
      }
    }
    // So is each access log that exists (one that is a FIFO no process reads
    // passes: its logger waits for a reader); a missing one must be creatable.
    for (const auto& path : r.config.access_log_paths) {
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) {
        check_writable("access_log", path, false, errors);
        continue;
      }
      try {
        const gw::core::UniqueFd f(gw::process::open_access_log(path));
      } catch (const std::exception& e) {
        errors.push_back(fmt::format("access_log: {}", e.what()));
      }
    }
    const size_t before = errors.size();
    check_writable("state_file", r.config.state_file, true, errors);
    // The runtime state a start would take (the state file or the shm
    // segment), read as the start reads it: a file it cannot parse, or a
    // table that does not fit shm.max_*, stops it.
    std::vector<std::string> warnings;
    if (errors.size() == before) {
      try {
        warnings = gw::process::check_runtime_state(r.config);
      } catch (const std::exception& e) {
        errors.push_back(e.what());
      }
    }
    if (!errors.empty()) {
      for (const auto& e : errors) fmt::print(stderr, "{}: {}\n", shown_path, gw::core::one_line(e));
      fmt::print(stderr, "{}: {} error(s)\n", shown_path, errors.size());
      return 1;
    }
    // Config edits the runtime state overrides: valid, but not what a start
    // or a reload would apply (the same warnings a start logs); and what the
    // running gwd's reload refuses (a restart takes it).
    for (const auto& w : warnings) fmt::print(stderr, "{}: warning: {}\n", shown_path, gw::core::one_line(w));
    fmt::print("ok\n");
    return 0;
  }
  bool log_in_file = false;  // the error log is log_file, not stderr
  try {
    gw::core::log_set_role("master");
    gw::core::log_set_level(r.config.log_level);
    gw::core::log_open(r.config.log_file);
    log_in_file = !r.config.log_file.empty();
    return gw::process::run_master(r.config, std::vector<std::string>(argv, argv + argc));
  } catch (const std::exception& e) {
    GW_LOG_ERROR("{}", e.what());
    gw::process::tell_old_master(e.what());
    // The log may be a file; the operator starting gwd must see why it failed
    // (once: a log_file that did not open left the error log on stderr).
    if (log_in_file) fmt::print(stderr, "gwd: {}\n", gw::core::one_line(e.what()));
    return 1;
  }
}
