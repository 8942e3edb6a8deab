#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "gw/core/log.hpp"

TEST_SUITE("core") {
  TEST_CASE("a log record is one line: control characters in the text cannot forge another") {
    char path[] = "/tmp/gw-log-test-XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    gw::core::log_open(path);
    gw::core::log_write(gw::core::LogLevel::warn, "bad key \"x\nerror master[1]: FORGED\r\x1b[2J\"\tend");
    gw::core::log_open("");  // back to stderr
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    ::unlink(path);
    const std::string text = ss.str();
    CHECK(text.find('\n') == text.size() - 1);
    CHECK(text.find("bad key \"x?error master[1]: FORGED??[2J\"\tend\n") != std::string::npos);
  }
}
