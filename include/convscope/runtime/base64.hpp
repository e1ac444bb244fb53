#pragma once
// Base64 (RFC 4648, standard alphabet, with padding) for bytes carried inside JSON: PNG data
// URLs and quantised activations for the web explorer.
#include <string>

namespace convscope::detail {

std::string base64_encode(const std::string& bytes);
// Decodes base64; whitespace is ignored, padding optional. Throws Error for other characters.
std::string base64_decode(const std::string& text);
// "data:<mime>;base64,<...>"
std::string data_url(const std::string& mime, const std::string& bytes);

}  // namespace convscope::detail
