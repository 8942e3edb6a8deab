#pragma once
// Process-wide logging: one line per message, "time level role[pid]: text".
// Written with a single write(2) so lines from workers sharing a file never
// interleave. Any thread may call the log functions after log_init().

#include <fmt/format.h>

#include <string>
#include <string_view>

namespace gw::core {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3 };

/// Parses "debug|info|warn|error"; returns false for anything else.
bool parse_log_level(std::string_view s, LogLevel& out);

/// Sets the role shown in each line ("master", "worker 0", "gwctl") and the level.
void log_set_role(std::string_view role);
void log_set_level(LogLevel level);
LogLevel log_level();

/// Redirects output to `path` (appending); empty means stderr. Throws on failure.
void log_open(const std::string& path);

/// Opens `path` for writing as log_open does, and returns the descriptor;
/// throws "cannot open log file PATH: why" on failure. Without `create` a
/// missing file is not created: -1 (for `gwd -t`, which creates nothing).
int log_open_file(const std::string& path, bool create);

void log_write(LogLevel level, std::string_view text) noexcept;

template <typename... Args>
void log(LogLevel level, fmt::format_string<Args...> f, Args&&... args) noexcept {
  if (level < log_level()) return;
  try {
    log_write(level, fmt::format(f, std::forward<Args>(args)...));
  } catch (...) {
  }
}

}  // namespace gw::core

#define GW_LOG_DEBUG(...) ::gw::core::log(::gw::core::LogLevel::debug, __VA_ARGS__)
#define GW_LOG_INFO(...) ::gw::core::log(::gw::core::LogLevel::info, __VA_ARGS__)
#define GW_LOG_WARN(...) ::gw::core::log(::gw::core::LogLevel::warn, __VA_ARGS__)
#define GW_LOG_ERROR(...) ::gw::core::log(::gw::core::LogLevel::error, __VA_ARGS__)
