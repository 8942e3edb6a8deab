#pragma once
// Base64 (RFC 4648, standard alphabet, with padding): the etcd v3 JSON gateway
// carries keys and values as base64 strings.

#include <string>
#include <string_view>

namespace gw::cluster {

std::string base64_encode(std::string_view in);
/// Decodes padded base64; returns false for bad characters, a bad length or bad padding.
bool base64_decode(std::string_view in, std::string& out);

}  // namespace gw::cluster
