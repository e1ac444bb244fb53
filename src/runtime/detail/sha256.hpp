#pragma once
// SHA-256 of model files and datasets, from OpenSSL's libcrypto (EVP). Incremental: feed bytes
// with update(), then call hex_digest() (or digest()) once.
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace convscope::detail {

class Sha256 {
public:
    Sha256();
    ~Sha256();
    Sha256(const Sha256&) = delete;
    Sha256& operator=(const Sha256&) = delete;
    // Adds `size` bytes to the message.
    void update(const void* data, size_t size);
    void update(const std::string& data) { update(data.data(), data.size()); }
    // Finishes the message and returns the 32-byte digest. The object must not be reused.
    std::array<uint8_t, 32> digest();
    // The digest as 64 lowercase hex characters.
    std::string hex_digest();

private:
    struct Ctx;
    std::unique_ptr<Ctx> ctx_;
};

}  // namespace convscope::detail
