#pragma once
// The command-line parse of gwd and gwctl (CLI11), ending the same way in
// both: --help and --version print and exit 0; a usage error is one line,
// "PROG: what (see PROG --help)", on stderr and exit status 2, as gwctl's
// other errors are one line (CLI11 prints two, without the program's name,
// and exits with its own codes, 106..115).

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <optional>

#include "gw/core/text.hpp"

namespace gw::core {

/// The version gwd and gwctl print for -V / --version (the CMake project's).
inline constexpr const char* kVersion = GW_VERSION;

/// Exit status of a usage error (a bad option or argument).
inline constexpr int kUsageExit = 2;

/// Prints a usage error of `prog` as one line on stderr; returns kUsageExit.
inline int usage_error(const char* prog, std::string_view what) {
  std::fflush(stdout);
  fmt::print(stderr, "{}: {} (see {} --help)\n", prog, one_line(what), prog);
  return kUsageExit;
}

/// Parses argv into `app`. Returns nothing when the program goes on, else its
/// exit status: 0 after --help or --version (printed on stdout), kUsageExit
/// after a usage error (one line on stderr).
inline std::optional<int> parse_command_line(CLI::App& app, const char* prog, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return usage_error(prog, e.what());
  }
  return std::nullopt;
}

}  // namespace gw::core
