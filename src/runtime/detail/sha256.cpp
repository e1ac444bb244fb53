#include "runtime/detail/sha256.hpp"

#include <openssl/evp.h>

#include <stdexcept>

namespace convscope::detail {

struct Sha256::Ctx {
    EVP_MD_CTX* md = nullptr;
    ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
    ctx_->md = EVP_MD_CTX_new();
    if (!ctx_->md || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("OpenSSL cannot start a SHA-256 digest");
}

Sha256::~Sha256() = default;

void Sha256::update(const void* data, size_t size) {
    if (size > 0 && EVP_DigestUpdate(ctx_->md, data, size) != 1)
        throw std::runtime_error("OpenSSL's SHA-256 update failed");
}

std::array<uint8_t, 32> Sha256::digest() {
    std::array<uint8_t, 32> out{};
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(ctx_->md, out.data(), &n) != 1 || n != out.size())
        throw std::runtime_error("OpenSSL's SHA-256 digest failed");
    return out;
}

std::string Sha256::hex_digest() {
    static const char hex[] = "0123456789abcdef";
    std::string s;
    for (uint8_t b : digest()) {
        s += hex[b >> 4];
        s += hex[b & 15];
    }
    return s;
}

}  // namespace convscope::detail
