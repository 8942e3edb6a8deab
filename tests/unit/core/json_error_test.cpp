#include <doctest/doctest.h>
#include <simdjson.h>

#include <string>

#include "gw/core/json_error.hpp"

using gw::core::JsonError;
using gw::core::locate_json_error;

namespace {

// "line:column path: what" for a text simdjson refuses too (the scanner runs
// only after it did: both must see an error).
std::string where(const std::string& doc) {
  simdjson::dom::parser p;
  simdjson::dom::element e;
  const bool refused = p.parse(simdjson::padded_string(doc)).get(e) != simdjson::SUCCESS;
  const JsonError j = locate_json_error(doc);
  CHECK_MESSAGE(refused == j.found, doc);
  if (!j.found) return "ok";
  return std::to_string(j.line) + ":" + std::to_string(j.column) + " " + j.path + ": " + j.what;
}

}  // namespace

TEST_SUITE("core") {
  TEST_CASE("JSON errors: where and what, as simdjson refuses them") {
    CHECK(where(R"({"a": [1, 2], "b": {"c": null}, "d": "x\u00e9\ud83d\ude00", "e": -0.5e-3})") == "ok");
    CHECK(where("{\n  \"a\": 1,\n}") == "2:9 : a trailing comma: JSON has none before '}'");
    CHECK(where("{\"u\": [{\"p\": [1,\n 2, ]}]}") == "2:3 u[0].p: a trailing comma: JSON has none before ']'");
    CHECK(where("\xef\xbb\xbf{}") == "1:1 : a UTF-8 byte-order mark at the start: remove it (JSON text has none)");
    CHECK(where("{\n  // workers\n  \"workers\": 1}") == "2:3 : a comment: JSON has none; remove it");
    CHECK(where("{\"a\": 1 /* x */}") == "1:9 : a comment: JSON has none; remove it");
    CHECK(where("{\"workers\": 99999999999999999999999}") ==
          "1:13 workers: the number 99999999999999999999999 is out of range (an integer must be "
          "-9223372036854775808..18446744073709551615)");
    CHECK(where("[18446744073709551615, -9223372036854775808, 1e-400]") == "ok");
    CHECK(where("[18446744073709551616]").starts_with("1:2 [0]: the number 18446744073709551616 is out of range"));
    CHECK(where("[-9223372036854775809]").starts_with("1:2 [0]: the number -9223372036854775809 is out of range"));
    CHECK(where("{\"x\": 1.8e308}") == "1:7 x: the number 1.8e308 is out of range (beyond a double's 1.8e308)");
    CHECK(where("[01]") == "1:2 [0]: an invalid number 01: no leading zeros");
    CHECK(where("[1.]") == "1:2 [0]: an invalid number 1.: a digit must follow '.'");
    CHECK(where("[-]") == "1:2 [0]: an invalid number -: a digit must follow '-'");
    CHECK(where("[1e+]") == "1:2 [0]: an invalid number 1e+: a digit must follow the exponent's 'e'");
    CHECK(where("{\"a\": True}") ==
          "1:7 a: expected a value (a string in double quotes, a number, true, false, null, an object or an array), "
          "found 'True'");
    CHECK(where("{\"a\" 1}") == "1:6 : expected ':' after the key \"a\", found '1'");
    CHECK(where("{\"a\": 1 \"b\": 2}") == "1:9 : expected ',' or '}' after a value, found '\"'");
    CHECK(where("{a: 1}") == "1:2 : expected a key (a string in double quotes), found 'a'");
    CHECK(where("[1 2]") == "1:4 : expected ',' or ']' after a value, found '2'");
    CHECK(where("{} x") == "1:4 : expected the end of the document after its value, found 'x'");
    CHECK(where("  \n ") == "2:2 : the document is empty");
    CHECK(where("{\"a\": [1,") == "1:10 a[1]: the document ends where a value is expected");
    CHECK(where("{\"a\": \"x") == "1:7 a: a string that is not closed (its '\"' is missing)");
    CHECK(where("[\"a\tb\"]") ==
          "1:4 [0]: a control character (byte 0x09) in a string: write it escaped (\\n, \\t, \\u00XX)");
    CHECK(where("[\"\\x\"]") == "1:3 [0]: an invalid escape \\'x' in a string");
    CHECK(where("[\"\\u12\"]") == "1:3 [0]: a \\u escape without 4 hex digits");
    CHECK(where("[\"\\ud800\"]") == "1:3 [0]: a \\ud800 escape: a lone UTF-16 surrogate");
    CHECK(where("[\"\\udc00\"]") == "1:3 [0]: a \\udc00 escape: a lone UTF-16 surrogate");
    CHECK(where("[\"\xff\"]") == "1:3 [0]: invalid UTF-8 in a string (byte 0xff)");
    // Columns count characters: "é" is one.
    CHECK(where("{\"é\": 1,}") == "1:8 : a trailing comma: JSON has none before '}'");
    CHECK(where("[é]") == "1:2 [0]: expected a value, found 'é'");
    // Nested deeper than simdjson goes.
    CHECK(
        where(std::string(1025, '[') + std::string(1025, ']')).ends_with("objects and arrays nested deeper than 1024"));
    CHECK(gw::core::json_error_text(JsonError{}, "Problem while parsing a number") ==
          "invalid JSON: Problem while parsing a number");
  }
}
