#include "methods/detail/radix_sort.hpp"

#include <cstring>

#include "convscope/runtime/error.hpp"

namespace convscope::detail {

uint32_t orderable_key(float f, bool descending) {
    f += 0.0f;  // -0 and +0 become one key
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    const uint32_t key = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return descending ? ~key : key;
}

void radix_sort(std::vector<uint32_t>& key, std::vector<uint32_t>& idx, std::vector<uint32_t>& key_scratch,
                std::vector<uint32_t>& idx_scratch) {
    CONVSCOPE_CHECK(key.size() == idx.size(), "one index per key");
    const size_t n = key.size();
    if (n == 0) return;
    key_scratch.resize(n);
    idx_scratch.resize(n);
    for (int shift = 0; shift < 32; shift += 8) {
        size_t count[257] = {0};
        for (size_t i = 0; i < n; ++i) ++count[((key[i] >> shift) & 0xffu) + 1];
        if (count[((key[0] >> shift) & 0xffu) + 1] == n) continue;  // every key has this byte: the order stays
        for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
        for (size_t i = 0; i < n; ++i) {
            const size_t at = count[(key[i] >> shift) & 0xffu]++;
            key_scratch[at] = key[i];
            idx_scratch[at] = idx[i];
        }
        key.swap(key_scratch);
        idx.swap(idx_scratch);
    }
}

}  // namespace convscope::detail
