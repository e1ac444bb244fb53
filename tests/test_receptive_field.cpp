#include <gtest/gtest.h>

#include "convscope/runtime/receptive_field.hpp"
#include "convscope/runtime/strings.hpp"

using namespace convscope;

TEST(ReceptiveField, UnitBoxIsClippedToTheImage) {
    ReceptiveField rf;
    rf.size_y = rf.size_x = 5;
    rf.stride_y = rf.stride_x = 2;
    rf.pad_y = rf.pad_x = 2;
    // Unit 0 starts at -2 and ends at 2 (inclusive): clipped to rows 0..2.
    Box b = unit_box(rf, 0, 0, 10, 10);
    EXPECT_EQ(b.y0, 0);
    EXPECT_EQ(b.y1, 3);
    b = unit_box(rf, 3, 2, 10, 10);
    EXPECT_EQ(b.y0, 4);
    EXPECT_EQ(b.y1, 9);
    EXPECT_EQ(b.x0, 2);
    EXPECT_EQ(b.x1, 7);
    b = unit_box(rf, 5, 5, 10, 10);
    EXPECT_EQ(b.y0, 8);
    EXPECT_EQ(b.y1, 10);
}

TEST(ReceptiveField, GlobalAndUnknownCoverTheImage) {
    ReceptiveField rf;
    rf.kind = ReceptiveField::Kind::Global;
    Box b = unit_box(rf, 3, 3, 28, 30);
    EXPECT_EQ(b.y0, 0);
    EXPECT_EQ(b.x0, 0);
    EXPECT_EQ(b.y1, 28);
    EXPECT_EQ(b.x1, 30);
}

TEST(Strings, EditDistance) {
    EXPECT_EQ(convscope::detail::edit_distance("conv1", "conv1"), 0u);
    EXPECT_EQ(convscope::detail::edit_distance("conv1", "conv2"), 1u);
    EXPECT_EQ(convscope::detail::edit_distance("", "abc"), 3u);
    EXPECT_EQ(convscope::detail::edit_distance("kitten", "sitting"), 3u);
}

TEST(Strings, ClosestNamesHint) {
    const std::vector<std::string> names{"conv1", "conv2", "layer1.0.conv1", "fc"};
    const std::string hint = convscope::detail::closest_names_hint("conv3", names);
    EXPECT_NE(hint.find("'conv1'"), std::string::npos);
    EXPECT_NE(hint.find("'conv2'"), std::string::npos);
    EXPECT_EQ(convscope::detail::closest_names_hint("x", {}), "");
}
