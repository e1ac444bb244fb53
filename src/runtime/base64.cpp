// Base64 through OpenSSL's libcrypto (EVP_EncodeBlock / EVP_DecodeBlock). Decoding first
// normalises what browsers and people send: whitespace dropped, the URL-safe alphabet mapped to
// the standard one, missing padding added; anything else is an error.
#include "convscope/runtime/base64.hpp"

#include <openssl/evp.h>

#include <cctype>
#include <vector>

#include "convscope/runtime/error.hpp"

namespace convscope::detail {

std::string base64_encode(const std::string& bytes) {
    std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
    const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(bytes.data()), int(bytes.size()));
    out.resize(size_t(n));
    return out;
}

std::string base64_decode(const std::string& text) {
    std::string clean;
    clean.reserve(text.size() + 3);
    size_t padding = 0;
    for (unsigned char c : text) {
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            ++padding;
            continue;
        }
        if (padding > 0 || !(std::isalnum(c) || c == '+' || c == '/' || c == '-' || c == '_'))
            throw Error("the base64 text holds an invalid character; send standard base64");
        clean += c == '-' ? '+' : (c == '_' ? '/' : char(c));
    }
    const size_t data_chars = clean.size();
    if (data_chars % 4 == 1) throw Error("the base64 text is truncated; send standard base64");
    const size_t pad = (4 - data_chars % 4) % 4;
    clean.append(pad, '=');
    std::string out(clean.size() / 4 * 3, '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(clean.data()), int(clean.size()));
    if (n < 0) throw Error("the base64 text cannot be decoded; send standard base64");
    out.resize(size_t(n) - pad);  // EVP_DecodeBlock counts the padding as zero bytes
    return out;
}

std::string data_url(const std::string& mime, const std::string& bytes) {
    return "data:" + mime + ";base64," + base64_encode(bytes);
}

}  // namespace convscope::detail
