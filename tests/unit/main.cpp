#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "gw/core/log.hpp"

int main(int argc, char** argv) {
  // Tests provoke warnings on purpose (a writer killed holding the lock, ...).
  gw::core::log_set_level(gw::core::LogLevel::error);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
