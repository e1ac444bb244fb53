#pragma once
// A small self-contained SHA-256 (FIPS 180-4), so hashing model files and datasets needs no
// extra dependency. Incremental: feed bytes with update(), then call hex_digest() once.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace convscope::detail {

class Sha256 {
public:
    Sha256();
    // Adds `size` bytes to the message.
    void update(const void* data, size_t size);
    void update(const std::string& data) { update(data.data(), data.size()); }
    // Finishes the message and returns the 32-byte digest. The object must not be reused.
    std::array<uint8_t, 32> digest();
    // The digest as 64 lowercase hex characters.
    std::string hex_digest();

private:
    void compress(const uint8_t* block);

    std::array<uint32_t, 8> state_;
    std::array<uint8_t, 64> buffer_;
    size_t buffered_ = 0;
    uint64_t total_bytes_ = 0;
};

}  // namespace convscope::detail
