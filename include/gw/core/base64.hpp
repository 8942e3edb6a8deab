#pragma once
// Base64 (RFC 4648): the standard alphabet with '=' padding (HTTP Basic
// credentials, RFC 7617; etcd's JSON gateway) and base64url without padding
// (JWT, RFC 7515 section 2). Decoding refuses anything but the canonical form:
// characters outside the alphabet, a bad length, misplaced padding, non-zero
// padding bits. Any thread.
//
// Written here rather than taken from OpenSSL (EVP_DecodeBlock): that accepts
// non-canonical input, always writes whole 3-byte groups, and has no url
// alphabet; the decoders here write into the caller's buffer, so a request's
// credentials are decoded without an allocation.

#include <cstddef>
#include <string>
#include <string_view>

namespace gw::core {

/// Decodes base64url without padding into out[0, cap); returns the decoded
/// length, or -1 if `in` is not canonical base64url or does not fit.
ptrdiff_t base64url_decode(std::string_view in, char* out, size_t cap) noexcept;
/// The same for standard base64 ('+', '/', '=' padding required).
ptrdiff_t base64_decode(std::string_view in, char* out, size_t cap) noexcept;
/// Standard base64 into `out` (replaced); false if `in` is not canonical.
bool base64_decode(std::string_view in, std::string& out);

/// Standard base64 with padding.
std::string base64_encode(std::string_view in);
/// base64url without padding.
std::string base64url_encode(std::string_view in);

}  // namespace gw::core
