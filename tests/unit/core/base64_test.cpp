#include <doctest/doctest.h>

#include <string>

#include "gw/core/base64.hpp"

using gw::core::base64_decode;
using gw::core::base64_encode;
using gw::core::base64url_decode;
using gw::core::base64url_encode;

TEST_SUITE("core") {
  TEST_CASE("base64url: RFC 4648 vectors, no padding, canonical only") {
    char out[64];
    CHECK(base64url_decode("", out, sizeof(out)) == 0);
    CHECK(base64url_decode("Zg", out, sizeof(out)) == 1);
    CHECK(std::string(out, 1) == "f");
    CHECK(base64url_decode("Zm9vYmFy", out, sizeof(out)) == 6);
    CHECK(std::string(out, 6) == "foobar");
    CHECK(base64url_decode("Zm9vYg", out, sizeof(out)) == 4);
    CHECK(base64url_decode("-_8", out, sizeof(out)) == 2);  // 0xfb 0xff
    CHECK(static_cast<unsigned char>(out[0]) == 0xfb);
    CHECK(base64url_decode("Zg==", out, sizeof(out)) == -1);   // padding is not base64url
    CHECK(base64url_decode("Zm9vY", out, sizeof(out)) == -1);  // length 4n+1
    CHECK(base64url_decode("Zh", out, sizeof(out)) == -1);     // non-zero padding bits
    CHECK(base64url_decode("+/8", out, sizeof(out)) == -1);    // the standard alphabet
    CHECK(base64url_decode("Zm9v YmFy", out, sizeof(out)) == -1);
    CHECK(base64url_decode("Zm9vYmFy", out, 5) == -1);  // does not fit
    CHECK(base64url_encode("foobar") == "Zm9vYmFy");
    CHECK(base64url_encode(std::string("\xfb\xff", 2)) == "-_8");
  }

  TEST_CASE("base64 (Basic credentials): padding required") {
    char out[64];
    auto n = base64_decode("QWxhZGRpbjpvcGVuIHNlc2FtZQ==", out, sizeof(out));
    REQUIRE(n == 19);
    CHECK(std::string(out, 19) == "Aladdin:open sesame");
    CHECK(base64_decode("QWxhZGRpbjpvcGVuIHNlc2FtZQ", out, sizeof(out)) == -1);
    CHECK(base64_decode("QW=x", out, sizeof(out)) == -1);
    CHECK(base64_decode("Zm9vYmFy", out, sizeof(out)) == 6);
  }

  TEST_CASE("base64 round trips and refuses bad input") {
    CHECK(base64_encode("") == "");
    CHECK(base64_encode("f") == "Zg==");
    CHECK(base64_encode("fo") == "Zm8=");
    CHECK(base64_encode("foo") == "Zm9v");
    CHECK(base64_encode("/gw/upstreams/app") == "L2d3L3Vwc3RyZWFtcy9hcHA=");
    std::string all;
    for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
    for (size_t n = 0; n < all.size(); n += 37) {
      std::string out;
      REQUIRE(base64_decode(base64_encode(all.substr(0, n)), out));
      CHECK(out == all.substr(0, n));
    }
    std::string out;
    CHECK(base64_decode("aGVsbG8=", out));
    CHECK(out == "hello");
    CHECK_FALSE(base64_decode("aGVsbG8", out));   // length
    CHECK_FALSE(base64_decode("aGV$bG8=", out));  // alphabet
    CHECK_FALSE(base64_decode("a===", out));      // too much padding
    CHECK_FALSE(base64_decode("Zh==", out));      // non-zero leftover bits
    CHECK_FALSE(base64_decode("Zg==Zg==", out));  // padding in the middle
  }

  TEST_CASE("base64 into a caller's buffer: the same answers as into a string") {
    // Every input the string form accepts or refuses, the buffer form does too.
    for (const char* in : {"", "Zg==", "Zm8=", "Zm9v", "aGVsbG8=", "aGVsbG8", "a===", "Zh==", "Zg==Zg==", "QW=x"}) {
      std::string s;
      char buf[16];
      const bool ok = base64_decode(in, s);
      const ptrdiff_t n = base64_decode(in, buf, sizeof(buf));
      CHECK_MESSAGE(ok == (n >= 0), in);
      if (ok) CHECK(std::string(buf, static_cast<size_t>(n)) == s);
    }
    std::string all;
    for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
    char out[256];
    for (size_t n = 0; n <= all.size(); n += 17) {
      const ptrdiff_t got = base64url_decode(base64url_encode(all.substr(0, n)), out, sizeof(out));
      REQUIRE(got == static_cast<ptrdiff_t>(n));
      CHECK(std::string(out, n) == all.substr(0, n));
    }
    std::string s = "left over";
    CHECK_FALSE(base64_decode("Zh==", s));
    CHECK(s.empty());  // a refused input leaves nothing behind
  }
}
