// The two tiers of errors: a caller's mistake is a convscope::Error; a broken internal
// invariant is an InternalError from CONVSCOPE_CHECK, in every build type, naming file and line.
#include <gtest/gtest.h>

#include <string>

#include "convscope/runtime/error.hpp"

TEST(Errors, ChecksThrowInternalErrorsWithTheirPlace) {
    int calls = 0;
    auto side_effect = [&] { return ++calls > 0; };
    EXPECT_NO_THROW(CONVSCOPE_CHECK(side_effect(), "never"));
    EXPECT_EQ(calls, 1);  // the condition is evaluated once, also in Release
    const int line = __LINE__ + 2;
    try {
        CONVSCOPE_CHECK(calls == 2, "the count");
        ADD_FAILURE() << "expected an InternalError";
    } catch (const convscope::Error&) {
        ADD_FAILURE() << "an invariant is not a user error";
    } catch (const convscope::InternalError& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("test_error.cpp:" + std::to_string(line)), std::string::npos) << what;
        EXPECT_NE(what.find("the count (calls == 2 does not hold)"), std::string::npos) << what;
    }
}
