// Base64 (through libcrypto) against RFC 4648's test vectors, and the forms decoding accepts.
#include <gtest/gtest.h>

#include <random>

#include "convscope/runtime/base64.hpp"
#include "test_util.hpp"

using namespace convscope;

TEST(Base64, Rfc4648VectorsBothWays) {
    const std::vector<std::pair<std::string, std::string>> vectors = {
        {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
    for (const auto& [plain, coded] : vectors) {
        EXPECT_EQ(convscope::detail::base64_encode(plain), coded);
        EXPECT_EQ(convscope::detail::base64_decode(coded), plain);
    }
    EXPECT_EQ(convscope::detail::data_url("image/png", "fo"), "data:image/png;base64,Zm8=");
}

TEST(Base64, DecodingAcceptsWhitespaceMissingPaddingAndUrlSafe) {
    EXPECT_EQ(convscope::detail::base64_decode("Zm9v\nYmE"), "fooba");
    EXPECT_EQ(convscope::detail::base64_decode(" Zg "), "f");
    // 0xfb 0xff: "+/8=" in the standard alphabet, "-_8" URL-safe without padding.
    EXPECT_EQ(convscope::detail::base64_decode("-_8"), std::string("\xfb\xff"));
    EXPECT_EQ(convscope::detail::base64_decode("+/8="), std::string("\xfb\xff"));
    expect_error([] { convscope::detail::base64_decode("Zm9v!"); }, "invalid character");
    expect_error([] { convscope::detail::base64_decode("Zg==Zg=="); }, "invalid character");
    expect_error([] { convscope::detail::base64_decode("Zm9vY"); }, "truncated");
    std::mt19937 rng(7);
    for (int n = 0; n < 70; ++n) {
        std::string bytes(size_t(n), '\0');
        for (auto& b : bytes) b = char(rng() & 0xff);
        EXPECT_EQ(convscope::detail::base64_decode(convscope::detail::base64_encode(bytes)), bytes) << n;
    }
}
