#pragma once
// Where a JSON text that simdjson refused goes wrong. simdjson says what kind
// of error it met ("The JSON document has an improper structure", "Problem
// while parsing a number") but not where; a config file or a request body
// with a trailing comma deserves "line 12, column 5". This is a small
// validating scan (RFC 8259, with simdjson's limits: integers that fit in
// int64 or uint64, finite doubles, no lone UTF-16 surrogate in a \u escape)
// that stops at the first offending byte. It runs only after simdjson failed,
// so it is written to be obviously correct, not fast.
//
// Boundary code (config loading, the admin API's bodies, the state file):
// allocates.

#include <cstddef>
#include <string>
#include <string_view>

namespace gw::core {

struct JsonError {
  bool found = false;  ///< false: the scan found nothing wrong (a limit of simdjson's it does not model)
  size_t line = 0;     ///< 1-based
  size_t column = 0;   ///< 1-based, in characters (a UTF-8 sequence is one)
  /// The key path of the value (or of the object or array) the error is in:
  /// "upstreams[0].pools", "workers"; "" for the document itself.
  std::string path;
  /// What is wrong, with the offending character: "a trailing comma before
  /// '}'", "expected ',' or '}' after a value, found '\"'".
  std::string what;
};

/// The first error in `doc`, if any.
JsonError locate_json_error(std::string_view doc);

/// "invalid JSON at line 3, column 5: a trailing comma before '}'" for a
/// found error, else "invalid JSON: " + `fallback` (simdjson's message).
std::string json_error_text(const JsonError& e, std::string_view fallback);

}  // namespace gw::core
