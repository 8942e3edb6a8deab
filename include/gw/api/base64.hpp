#pragma once
// Allocation-free base64 decoding for credentials: base64url without padding
// (JWT, RFC 7515 section 2) and standard base64 with padding (HTTP Basic,
// RFC 7617). Both refuse non-canonical input (stray characters, bad length,
// non-zero padding bits). Any thread; noexcept.

#include <cstddef>
#include <string>
#include <string_view>

namespace gw::api {

/// Decodes into out[0, cap); returns the decoded length, or -1 if `in` is
/// not canonical base64url (no '=') or does not fit.
ptrdiff_t base64url_decode(std::string_view in, char* out, size_t cap) noexcept;
/// The same for standard base64 ('+', '/', '=' padding required).
ptrdiff_t base64_decode(std::string_view in, char* out, size_t cap) noexcept;
/// base64url without padding (tests and tools).
std::string base64url_encode(std::string_view in);

}  // namespace gw::api
