#include <doctest/doctest.h>

#include <string>

#include "gw/core/text.hpp"

using gw::core::one_line;

TEST_SUITE("core") {
  TEST_CASE("one_line: controls escaped, UTF-8 kept") {
    CHECK(one_line("a\nb\r\tc") == "a\\nb\\r\\tc");
    CHECK(one_line("\x1b[31m\x7f") == "\\x1b[31m\\x7f");
    CHECK(one_line(std::string("a\0b", 3)) == "a\\x00b");
    CHECK(one_line("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    CHECK(one_line("\xc2\xa0") == "\xc2\xa0");  // U+00A0, the first after C1: printable
  }

  TEST_CASE("one_line: C1 controls and bytes that are not UTF-8 are escaped byte by byte") {
    // U+009B (CSI) would start an escape sequence in a terminal.
    CHECK(one_line("1.2.3.4:5\xc2\x9b"
                   "31m") == "1.2.3.4:5\\xc2\\x9b31m");
    CHECK(one_line("\xc2\x80\xc2\x9f") == "\\xc2\\x80\\xc2\\x9f");
    CHECK(one_line("\xff") == "\\xff");
    CHECK(one_line("a\x9b"
                   "b") == "a\\x9bb");                              // a lone continuation byte
    CHECK(one_line("\xe2\x82") == "\\xe2\\x82");                    // cut short
    CHECK(one_line("\xc0\xaf") == "\\xc0\\xaf");                    // overlong '/'
    CHECK(one_line("\xed\xa0\x80") == "\\xed\\xa0\\x80");           // a surrogate
    CHECK(one_line("\xf4\x90\x80\x80") == "\\xf4\\x90\\x80\\x80");  // past U+10FFFF
    CHECK(one_line("\xe2\x82\xac\xff\xe2\x82\xac") == "\xe2\x82\xac\\xff\xe2\x82\xac");
  }
}
