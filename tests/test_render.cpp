// Tests for the render module: exact pixel values on known inputs, computed by the formulas
// documented in render.hpp.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <opencv2/imgcodecs.hpp>

#include "runtime/detail/render_util.hpp"
#include <opencv2/imgproc.hpp>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/render.hpp"

namespace fs = std::filesystem;
using namespace convscope;

namespace {

cv::Vec3b hex(uint32_t rgb) { return cv::Vec3b((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255); }

cv::Vec3b vec(const cv::Scalar& s) {
    return cv::Vec3b(static_cast<uchar>(s[0]), static_cast<uchar>(s[1]), static_cast<uchar>(s[2]));
}

int max_channel_diff(const cv::Vec3b& a, const cv::Vec3b& b) {
    int d = 0;
    for (int c = 0; c < 3; ++c) d = std::max(d, std::abs(int(a[c]) - int(b[c])));
    return d;
}

// Number of pixels of exactly this colour.
int count_colour(const cv::Mat& img, const cv::Vec3b& c) {
    int n = 0;
    for (int y = 0; y < img.rows; ++y)
        for (int x = 0; x < img.cols; ++x) n += img.at<cv::Vec3b>(y, x) == c;
    return n;
}

bool all_pixels(const cv::Mat& img, const cv::Rect& r, const cv::Vec3b& c) {
    for (int y = r.y; y < r.y + r.height; ++y)
        for (int x = r.x; x < r.x + r.width; ++x)
            if (img.at<cv::Vec3b>(y, x) != c) return false;
    return true;
}

cv::Mat solid(int h, int w, const cv::Vec3b& c) {
    return cv::Mat(h, w, CV_8UC3, cv::Scalar(c[0], c[1], c[2]));
}

bool equal_images(const cv::Mat& a, const cv::Mat& b) {
    if (a.size() != b.size() || a.type() != b.type()) return false;
    cv::Mat diff;
    cv::absdiff(a, b, diff);
    return cv::countNonZero(diff.reshape(1)) == 0;
}

// A fresh empty folder under the system temp folder.
fs::path temp_folder(const std::string& name) {
    fs::path p =
        fs::temp_directory_path() / ("convscope_render_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
    return p;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Colormaps and ranges

TEST(RenderColormap, GrayTwoByTwoGivesExactBytes) {
    // index = round((v - lo) / (hi - lo) * 255): 0, 85, 170, 255.
    const at::Tensor v = torch::tensor({0.f, 1.f, 2.f, 3.f}).reshape({2, 2});
    const cv::Mat img = apply_colormap(v, Colormap::Gray, 0.f, 3.f);
    ASSERT_EQ(img.type(), CV_8UC3);
    ASSERT_EQ(img.rows, 2);
    ASSERT_EQ(img.cols, 2);
    EXPECT_EQ(img.at<cv::Vec3b>(0, 0), cv::Vec3b(0, 0, 0));
    EXPECT_EQ(img.at<cv::Vec3b>(0, 1), cv::Vec3b(85, 85, 85));
    EXPECT_EQ(img.at<cv::Vec3b>(1, 0), cv::Vec3b(170, 170, 170));
    EXPECT_EQ(img.at<cv::Vec3b>(1, 1), cv::Vec3b(255, 255, 255));
    // The auto range gives the same picture; integer and double inputs are accepted.
    EXPECT_TRUE(equal_images(apply_colormap(v, Colormap::Gray), img));
    EXPECT_TRUE(equal_images(apply_colormap(v.to(torch::kInt64), Colormap::Gray), img));
    EXPECT_TRUE(equal_images(apply_colormap(v.to(torch::kDouble), Colormap::Gray), img));
}

TEST(RenderColormap, ColourIndexFormula) {
    const Range r{-1.f, 1.f};
    EXPECT_EQ(colour_index(-1.f, r), 0);
    EXPECT_EQ(colour_index(1.f, r), 255);
    EXPECT_EQ(colour_index(-5.f, r), 0);  // clamped
    EXPECT_EQ(colour_index(5.f, r), 255);
    EXPECT_EQ(colour_index(0.5f, r), 191);  // 0.75 * 255 = 191.25
    EXPECT_EQ(colour_index(std::numeric_limits<float>::infinity(), r), 255);
    EXPECT_EQ(colour_index(-std::numeric_limits<float>::infinity(), r), 0);
    EXPECT_EQ(colour_index(std::nanf(""), r), 128);
    EXPECT_EQ(colour_index(3.f, Range{2.f, 2.f}), 128);  // constant: middle
    EXPECT_EQ(colour_index(3.f, Range{2.f, 1.f}), 128);  // inverted: middle
}

TEST(RenderColormap, PerceptualMapsMatchPublishedColours) {
    const auto& viridis = colormap_table(Colormap::Viridis);
    EXPECT_LE(max_channel_diff(viridis[0], hex(0x440154)), 1);
    EXPECT_LE(max_channel_diff(viridis[255], hex(0xfde725)), 1);
    // viridis at 1/4, 1/2, 3/4 (the published five-step viridis palette).
    EXPECT_LE(max_channel_diff(viridis[64], hex(0x3b528b)), 2);
    EXPECT_LE(max_channel_diff(viridis[128], hex(0x21908c)), 2);
    EXPECT_LE(max_channel_diff(viridis[191], hex(0x5dc863)), 2);
    const auto& inferno = colormap_table(Colormap::Inferno);
    EXPECT_LE(max_channel_diff(inferno[0], hex(0x000004)), 1);
    EXPECT_LE(max_channel_diff(inferno[255], hex(0xfcffa4)), 1);
    const auto& magma = colormap_table(Colormap::Magma);
    EXPECT_LE(max_channel_diff(magma[0], hex(0x000004)), 1);
    EXPECT_LE(max_channel_diff(magma[255], hex(0xfcfdbf)), 1);
    const auto& turbo = colormap_table(Colormap::Turbo);
    EXPECT_LE(max_channel_diff(turbo[0], hex(0x30123b)), 1);
    EXPECT_LE(max_channel_diff(turbo[255], hex(0x7a0403)), 1);
    // Through apply_colormap: the ends of a ramp get the ends of the table.
    const cv::Mat img = apply_colormap(torch::tensor({{0.f, 0.5f, 1.f}}), Colormap::Viridis);
    EXPECT_EQ(img.at<cv::Vec3b>(0, 0), viridis[0]);
    EXPECT_EQ(img.at<cv::Vec3b>(0, 1), viridis[128]);
    EXPECT_EQ(img.at<cv::Vec3b>(0, 2), viridis[255]);
}

TEST(RenderColormap, GrayTableIsIdentity) {
    const auto& gray = colormap_table(Colormap::Gray);
    for (int i = 0; i < 256; ++i) ASSERT_EQ(gray[i], cv::Vec3b(i, i, i));
}

TEST(RenderColormap, DivergingMapsZeroToWhiteAndEndsToBlueAndRed) {
    const auto& table = colormap_table(Colormap::Diverging);
    EXPECT_EQ(table[127], cv::Vec3b(255, 255, 255));
    EXPECT_EQ(table[128], cv::Vec3b(255, 255, 255));
    EXPECT_GT(table[0][2], table[0][0]);      // blue end: more blue than red
    EXPECT_GT(table[255][0], table[255][2]);  // red end: more red than blue
    // Brightness falls monotonically from the centre towards both ends.
    for (int i = 1; i < 128; ++i) {
        ASSERT_LE(int(table[i - 1][0]) + table[i - 1][1] + table[i - 1][2],
                  int(table[i][0]) + table[i][1] + table[i][2]);
    }

    const at::Tensor v = torch::tensor({{-2.f, 0.f, 2.f, 1.f}});
    const cv::Mat img = apply_colormap(v, Colormap::Diverging);  // auto range: [-2, 2]
    EXPECT_EQ(img.at<cv::Vec3b>(0, 0), table[0]);
    EXPECT_EQ(img.at<cv::Vec3b>(0, 1), cv::Vec3b(255, 255, 255));
    EXPECT_EQ(img.at<cv::Vec3b>(0, 2), table[255]);
    EXPECT_EQ(img.at<cv::Vec3b>(0, 3), table[191]);  // 3/4 of [-2, 2]
    // An asymmetric range is made symmetric, so 0 stays white: [-0.5, 2] -> [-2, 2].
    const cv::Mat asym = apply_colormap(v, Colormap::Diverging, -0.5f, 2.f);
    EXPECT_TRUE(equal_images(asym, img));
    const Range e = effective_range(Colormap::Diverging, Range{-3.f, 1.f});
    EXPECT_FLOAT_EQ(e.lo, -3.f);
    EXPECT_FLOAT_EQ(e.hi, 3.f);
}

TEST(RenderColormap, ConstantInputMapsToTheMiddleAndNanToItsOwnColour) {
    const at::Tensor c = torch::full({3, 4}, 7.f);
    const Range r = value_range(c);
    EXPECT_FLOAT_EQ(r.lo, 7.f);
    EXPECT_FLOAT_EQ(r.hi, 7.f);
    const cv::Mat gray = apply_colormap(c, Colormap::Gray);
    EXPECT_EQ(count_colour(gray, cv::Vec3b(128, 128, 128)), 12);
    const cv::Mat viridis = apply_colormap(c, Colormap::Viridis, r);
    EXPECT_EQ(count_colour(viridis, colormap_table(Colormap::Viridis)[128]), 12);
    // All zero through the diverging map: white.
    const cv::Mat zero = apply_colormap(torch::zeros({2, 2}), Colormap::Diverging);
    EXPECT_EQ(count_colour(zero, cv::Vec3b(255, 255, 255)), 4);
    // NaN and infinite pixels get a colour of their own, in no colormap; the range ignores them.
    const float inf = std::numeric_limits<float>::infinity();
    const at::Tensor with_nan = torch::tensor({{0.f, std::nanf(""), 2.f, inf, -inf}});
    const Range rn = value_range(with_nan);
    EXPECT_FLOAT_EQ(rn.lo, 0.f);
    EXPECT_FLOAT_EQ(rn.hi, 2.f);
    for (Colormap cmap : {Colormap::Gray, Colormap::Viridis, Colormap::Diverging, Colormap::Inferno}) {
        const cv::Mat img = apply_colormap(with_nan, cmap);
        for (int x : {1, 3, 4}) EXPECT_EQ(img.at<cv::Vec3b>(0, x), kNonFiniteColour) << colormap_name(cmap);
        for (const cv::Vec3b& c : colormap_table(cmap)) EXPECT_NE(c, kNonFiniteColour) << colormap_name(cmap);
    }
    const cv::Mat img = apply_colormap(with_nan, Colormap::Gray);
    EXPECT_EQ(img.at<cv::Vec3b>(0, 0), cv::Vec3b(0, 0, 0));
    EXPECT_EQ(img.at<cv::Vec3b>(0, 2), cv::Vec3b(255, 255, 255));
    // Colour images: a pixel with any non-finite channel; bars: a full-height bar.
    at::Tensor rgb = torch::zeros({3, 1, 2});
    rgb[1][0][1] = std::nanf("");
    const cv::Mat pic = image_from_chw_float(rgb, Range{0.f, 1.f});
    EXPECT_EQ(pic.at<cv::Vec3b>(0, 1), kNonFiniteColour);
    EXPECT_NE(pic.at<cv::Vec3b>(0, 0), kNonFiniteColour);
    const cv::Mat bars = bar_strip(torch::tensor({1.f, std::nanf(""), 2.f}), 10, Colormap::Viridis, 1, 0);
    EXPECT_EQ(bars.at<cv::Vec3b>(0, 1), kNonFiniteColour);
    EXPECT_EQ(bars.at<cv::Vec3b>(9, 1), kNonFiniteColour);
}

TEST(RenderColormap, ParseNamesAndRejectUnknown) {
    EXPECT_EQ(parse_colormap("viridis"), Colormap::Viridis);
    EXPECT_EQ(parse_colormap("Inferno"), Colormap::Inferno);
    EXPECT_EQ(parse_colormap("MAGMA"), Colormap::Magma);
    EXPECT_EQ(parse_colormap("turbo"), Colormap::Turbo);
    EXPECT_EQ(parse_colormap("grey"), Colormap::Gray);
    EXPECT_EQ(parse_colormap("diverging"), Colormap::Diverging);
    EXPECT_EQ(parse_colormap("bwr"), Colormap::Diverging);
    for (const auto& name : colormap_names()) {
        EXPECT_EQ(colormap_name(parse_colormap(name)), name);
    }
    try {
        parse_colormap("jet");
        FAIL() << "expected UsageError";
    } catch (const UsageError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("jet"), std::string::npos);
        EXPECT_NE(msg.find("viridis"), std::string::npos);
        EXPECT_NE(msg.find("diverging"), std::string::npos);
    }
}

TEST(RenderRange, RangesOfKnownValues) {
    const at::Tensor t = torch::tensor({-3.f, 1.f, 2.f, 0.5f});
    Range r = value_range(t);
    EXPECT_FLOAT_EQ(r.lo, -3.f);
    EXPECT_FLOAT_EQ(r.hi, 2.f);
    r = symmetric_range(t);
    EXPECT_FLOAT_EQ(r.lo, -3.f);
    EXPECT_FLOAT_EQ(r.hi, 3.f);
    r = auto_range(Colormap::Diverging, t);
    EXPECT_FLOAT_EQ(r.hi, 3.f);
    r = auto_range(Colormap::Viridis, t);
    EXPECT_FLOAT_EQ(r.hi, 2.f);
    // Percentiles with linear interpolation (numpy's default): 0..100 over 0..10.
    const at::Tensor ramp = torch::arange(11, torch::kFloat);
    r = percentile_range(ramp, 10.0, 95.0);
    EXPECT_FLOAT_EQ(r.lo, 1.f);
    EXPECT_FLOAT_EQ(r.hi, 9.5f);
    r = symmetric_percentile_range(-ramp, 50.0);
    EXPECT_FLOAT_EQ(r.lo, -5.f);
    EXPECT_FLOAT_EQ(r.hi, 5.f);
    // Empty input.
    r = value_range(torch::empty({0}));
    EXPECT_FLOAT_EQ(r.lo, 0.f);
    EXPECT_FLOAT_EQ(r.hi, 0.f);
    EXPECT_THROW(value_range(at::Tensor()), Error);
}

// ---------------------------------------------------------------------------------------------
// Tensors -> pictures

TEST(RenderImage, FromHwcUint8KeepsRgbOrderAndExpandsGray) {
    at::Tensor rgb = torch::zeros({2, 3, 3}, torch::kUInt8);
    rgb[0][1][0] = 200;  // red at (0, 1)
    rgb[1][2][2] = 100;  // blue at (1, 2)
    const cv::Mat img = image_from_hwc_uint8(rgb);
    ASSERT_EQ(img.type(), CV_8UC3);
    EXPECT_EQ(img.at<cv::Vec3b>(0, 1), cv::Vec3b(200, 0, 0));
    EXPECT_EQ(img.at<cv::Vec3b>(1, 2), cv::Vec3b(0, 0, 100));
    // Round trip back to a tensor.
    EXPECT_TRUE(torch::equal(tensor_from_image(img), rgb));

    const at::Tensor gray = torch::tensor({{10, 20}, {30, 40}}, torch::kUInt8).unsqueeze(2);
    const cv::Mat g = image_from_hwc_uint8(gray);
    ASSERT_EQ(g.type(), CV_8UC3);
    EXPECT_EQ(g.at<cv::Vec3b>(1, 0), cv::Vec3b(30, 30, 30));
    EXPECT_TRUE(equal_images(image_from_hwc_uint8(gray.squeeze(2)), g));

    EXPECT_THROW(image_from_hwc_uint8(torch::zeros({2, 2, 3})), Error);                 // float
    EXPECT_THROW(image_from_hwc_uint8(torch::zeros({2, 2, 2}, torch::kUInt8)), Error);  // C = 2
}

TEST(RenderImage, FromChwFloatMapsChannelsWithOneRange) {
    // A 3-channel "filter" [3,1,2] in [-1, 1].
    const at::Tensor w = torch::tensor({-1.f, 1.f, 0.f, 0.5f, 1.f, -1.f}).reshape({3, 1, 2});
    const cv::Mat img = image_from_chw_float(w, symmetric_range(w));
    ASSERT_EQ(img.rows, 1);
    ASSERT_EQ(img.cols, 2);
    EXPECT_EQ(img.at<cv::Vec3b>(0, 0), cv::Vec3b(0, 128, 255));
    EXPECT_EQ(img.at<cv::Vec3b>(0, 1), cv::Vec3b(255, 191, 0));
    // One channel goes through the colormap.
    const at::Tensor one = torch::tensor({{{0.f, 1.f}}});
    const cv::Mat c1 = image_from_chw_float(one, Range{0.f, 1.f}, Colormap::Viridis);
    EXPECT_EQ(c1.at<cv::Vec3b>(0, 0), colormap_table(Colormap::Viridis)[0]);
    EXPECT_EQ(c1.at<cv::Vec3b>(0, 1), colormap_table(Colormap::Viridis)[255]);
    EXPECT_THROW(image_from_chw_float(torch::zeros({2, 2, 2}), Range{}), Error);
}

TEST(RenderImage, ColormapTilesSharedAndPerMapRanges) {
    const at::Tensor maps =
        torch::stack({torch::tensor({{0.f, 1.f}}), torch::tensor({{0.f, 2.f}})});
    const auto shared = colormap_tiles(maps, Colormap::Gray, true, 2);
    ASSERT_EQ(shared.size(), 2u);
    EXPECT_EQ(shared[0].size(), cv::Size(4, 2));
    EXPECT_EQ(shared[0].at<cv::Vec3b>(1, 3), cv::Vec3b(128, 128, 128));  // 1 of [0, 2]
    EXPECT_EQ(shared[1].at<cv::Vec3b>(1, 3), cv::Vec3b(255, 255, 255));
    const auto own = colormap_tiles(maps, Colormap::Gray, false, 1);
    EXPECT_EQ(own[0].at<cv::Vec3b>(0, 1), cv::Vec3b(255, 255, 255));  // 1 of [0, 1]
    EXPECT_EQ(own[1].at<cv::Vec3b>(0, 1), cv::Vec3b(255, 255, 255));
}

// ---------------------------------------------------------------------------------------------
// Resizing

TEST(RenderResize, UpscaleNearestReplicatesExactly) {
    cv::Mat src(2, 2, CV_8UC3);
    src.at<cv::Vec3b>(0, 0) = cv::Vec3b(1, 2, 3);
    src.at<cv::Vec3b>(0, 1) = cv::Vec3b(4, 5, 6);
    src.at<cv::Vec3b>(1, 0) = cv::Vec3b(7, 8, 9);
    src.at<cv::Vec3b>(1, 1) = cv::Vec3b(10, 11, 12);
    const cv::Mat up = upscale_nearest(src, 3);
    ASSERT_EQ(up.size(), cv::Size(6, 6));
    for (int y = 0; y < 6; ++y)
        for (int x = 0; x < 6; ++x)
            ASSERT_EQ(up.at<cv::Vec3b>(y, x), src.at<cv::Vec3b>(y / 3, x / 3));
    EXPECT_TRUE(equal_images(upscale_nearest(src, 1), src));
    // Float maps too.
    cv::Mat f(1, 2, CV_32F);
    f.at<float>(0, 0) = 0.25f;
    f.at<float>(0, 1) = -3.f;
    const cv::Mat fu = upscale_nearest(f, 2);
    EXPECT_EQ(fu.at<float>(1, 1), 0.25f);
    EXPECT_EQ(fu.at<float>(1, 3), -3.f);
    EXPECT_THROW(upscale_nearest(src, 0), Error);
}

TEST(RenderResize, ReadableFactorAndFit) {
    EXPECT_EQ(readable_factor(3, 3), 22);  // 66 px
    EXPECT_EQ(readable_factor(28, 28), 3);
    EXPECT_EQ(readable_factor(7, 14), 5);  // 70 px on the long side
    EXPECT_EQ(readable_factor(64, 64), 1);
    EXPECT_EQ(readable_factor(224, 224), 1);
    EXPECT_EQ(readable_factor(3, 3, 9), 3);
    const cv::Mat img = solid(28, 14, cv::Vec3b(9, 9, 9));
    EXPECT_EQ(resize_to_fit(img, 56).size(), cv::Size(28, 56));  // integer: nearest
    EXPECT_EQ(resize_to_fit(img, 14).size(), cv::Size(7, 14));
    EXPECT_EQ(resize_to_fit(img, 40).size(), cv::Size(20, 40));
}

// ---------------------------------------------------------------------------------------------
// Tile grids

TEST(RenderGrid, TilePositionsAndSeparatorsAreExact) {
    std::vector<cv::Mat> tiles;
    std::vector<cv::Vec3b> colours;
    for (int i = 0; i < 5; ++i) {
        colours.emplace_back(10 * (i + 1), 0, 200 - 10 * i);
        tiles.push_back(solid(2, 3, colours.back()));
    }
    const cv::Vec3b sep(1, 2, 3);
    const cv::Mat grid = tile_grid(tiles, 3, 1, cv::Scalar(1, 2, 3));
    // 3 columns, 2 rows: width 3*3 + 2, height 2*2 + 1.
    ASSERT_EQ(grid.size(), cv::Size(11, 5));
    for (int i = 0; i < 5; ++i) {
        const int r = i / 3, c = i % 3;
        EXPECT_TRUE(all_pixels(grid, cv::Rect(c * 4, r * 3, 3, 2), colours[i])) << "tile " << i;
    }
    EXPECT_TRUE(all_pixels(grid, cv::Rect(3, 0, 1, 5), sep));   // vertical separator 1
    EXPECT_TRUE(all_pixels(grid, cv::Rect(7, 0, 1, 3), sep));   // vertical separator 2, first row
    EXPECT_TRUE(all_pixels(grid, cv::Rect(0, 2, 11, 1), sep));  // horizontal separator
    // The empty last cell and the separator before it take the margin colour (white).
    EXPECT_TRUE(all_pixels(grid, cv::Rect(7, 3, 4, 2), cv::Vec3b(255, 255, 255)));
    EXPECT_EQ(count_colour(grid, sep), 11 * 5 - 5 * 6 - 4 * 2);

    // cols = 0: near-square, 3 x 2 for 5 tiles; no separators with separator_px = 0.
    EXPECT_EQ(tile_grid(tiles, 0, 0).size(), cv::Size(9, 4));
    EXPECT_EQ(tile_grid(tiles).size(), cv::Size(11, 5));
    EXPECT_THROW(tile_grid({}), Error);
}

TEST(RenderGrid, SeparatorStandsOutAgainstTheColormap) {
    // Diverging tiles are white around zero: their separator must be dark.
    EXPECT_EQ(separator_colour_for(Colormap::Diverging), kDarkSeparatorColour);
    EXPECT_EQ(separator_colour_for(Colormap::Viridis), kSeparatorColour);
    const cv::Scalar g = separator_colour_for(Colormap::Gray);
    EXPECT_FALSE(g[0] == g[1] && g[1] == g[2]);  // not a gray a Gray tile could contain
}

TEST(RenderGrid, SmallerTilesAreCentredAndGrayIsExpanded) {
    const cv::Vec3b a(200, 10, 10);
    cv::Mat gray(2, 2, CV_8UC1, cv::Scalar(77));
    const cv::Mat grid = tile_grid({solid(4, 4, a), gray}, 2, 1, cv::Scalar(0, 0, 0));
    ASSERT_EQ(grid.size(), cv::Size(9, 4));
    EXPECT_TRUE(all_pixels(grid, cv::Rect(0, 0, 4, 4), a));
    EXPECT_TRUE(all_pixels(grid, cv::Rect(6, 1, 2, 2), cv::Vec3b(77, 77, 77)));  // centred
    EXPECT_TRUE(all_pixels(grid, cv::Rect(5, 0, 4, 1), cv::Vec3b(0, 0, 0)));     // padding
}

TEST(RenderGrid, LabelledGridReportsLayoutAndDrawsLabels) {
    std::vector<cv::Mat> tiles;
    const cv::Vec3b c(0, 200, 0);
    for (int i = 0; i < 6; ++i) tiles.push_back(solid(8, 8, c));
    GridOptions opts;
    opts.cols = 3;
    opts.row_labels = {"ch 0", "ch 12"};
    opts.col_labels = {"a", "b", "c"};
    opts.tile_captions = {"1.0", "2.0", "3.0", "4.0", "5.0", "6.0"};
    GridLayout lay;
    const cv::Mat grid = labelled_grid(tiles, opts, &lay);
    EXPECT_EQ(lay.rows, 2);
    EXPECT_EQ(lay.cols, 3);
    EXPECT_EQ(lay.cell, cv::Size(8, 8));
    ASSERT_EQ(lay.cell_rects.size(), 6u);
    EXPECT_GT(lay.cell_rects[0].x, 8);  // room for the row labels
    EXPECT_GT(lay.cell_rects[0].y, 4);  // room for the column labels
    EXPECT_EQ(lay.cell_rects[1].x, lay.cell_rects[0].x + 9);
    EXPECT_EQ(lay.cell_rects[4].x, lay.cell_rects[1].x);
    EXPECT_EQ(lay.cell_rects[4].y, lay.cell_rects[3].y);
    EXPECT_GT(lay.cell_rects[3].y, lay.cell_rects[0].y + 8);  // a caption band between rows
    for (const auto& r : lay.cell_rects) EXPECT_TRUE(all_pixels(grid, r, c));
    // Dark text pixels in the left margin, the top band and the caption under tile 0.
    auto has_dark = [&](const cv::Rect& r) {
        for (int y = r.y; y < r.y + r.height; ++y)
            for (int x = r.x; x < r.x + r.width; ++x) {
                const cv::Vec3b p = grid.at<cv::Vec3b>(y, x);
                if (p[0] < 100 && p[1] < 100 && p[2] < 100) return true;
            }
        return false;
    };
    EXPECT_TRUE(has_dark(cv::Rect(0, lay.cell_rects[0].y, lay.cell_rects[0].x, 8)));
    EXPECT_TRUE(has_dark(cv::Rect(lay.cell_rects[0].x, 0, 8, lay.cell_rects[0].y)));
    const cv::Rect caption(lay.cell_rects[0].x, lay.cell_rects[0].y + 8, 8,
                           lay.cell_rects[3].y - lay.cell_rects[0].y - 9);
    EXPECT_TRUE(has_dark(caption));
    opts.row_labels = {"only one"};
    EXPECT_THROW(labelled_grid(tiles, opts), Error);
}

TEST(RenderGrid, SideBySidePlacesPicturesTopAligned) {
    const cv::Mat a = solid(3, 2, cv::Vec3b(10, 20, 30));
    cv::Mat g(5, 4, CV_8UC1, cv::Scalar(7));  // gray: expanded to RGB
    const cv::Mat out = side_by_side({a, g}, 3, cv::Scalar(1, 2, 3));
    ASSERT_EQ(out.type(), CV_8UC3);
    ASSERT_EQ(out.size(), cv::Size(2 + 3 + 4, 5));
    EXPECT_EQ(out.at<cv::Vec3b>(0, 0), cv::Vec3b(10, 20, 30));
    EXPECT_EQ(out.at<cv::Vec3b>(2, 1), cv::Vec3b(10, 20, 30));
    EXPECT_EQ(out.at<cv::Vec3b>(3, 0), cv::Vec3b(1, 2, 3));  // below the shorter picture
    EXPECT_EQ(out.at<cv::Vec3b>(0, 2), cv::Vec3b(1, 2, 3));  // the gap
    EXPECT_EQ(out.at<cv::Vec3b>(0, 4), cv::Vec3b(1, 2, 3));
    EXPECT_EQ(out.at<cv::Vec3b>(0, 5), cv::Vec3b(7, 7, 7));
    EXPECT_EQ(out.at<cv::Vec3b>(4, 8), cv::Vec3b(7, 7, 7));
    EXPECT_TRUE(equal_images(side_by_side({a}), a));
    EXPECT_THROW(side_by_side({}), Error);
    EXPECT_THROW(side_by_side({a, cv::Mat()}), Error);
    EXPECT_THROW(side_by_side({a}, -1), Error);
}

// ---------------------------------------------------------------------------------------------
// Overlays

TEST(RenderOverlay, AlphaZeroAndOneGiveBaseAndHeatExactly) {
    cv::Mat base(5, 7, CV_8UC3), heat(5, 7, CV_8UC3);
    cv::randu(base, 0, 256);
    cv::randu(heat, 0, 256);
    EXPECT_TRUE(equal_images(overlay(base, heat, 0.f), base));
    EXPECT_TRUE(equal_images(overlay(base, heat, 1.f), heat));
    // Half way: (a + b) / 2 rounded half up.
    const cv::Mat half =
        overlay(solid(1, 1, cv::Vec3b(10, 0, 255)), solid(1, 1, cv::Vec3b(21, 100, 0)), 0.5f);
    EXPECT_EQ(half.at<cv::Vec3b>(0, 0), cv::Vec3b(16, 50, 128));
    // A heat picture of another size is resized (a constant stays constant).
    const cv::Mat small = solid(2, 3, cv::Vec3b(9, 8, 7));
    EXPECT_TRUE(equal_images(overlay(base, small, 1.f), solid(5, 7, cv::Vec3b(9, 8, 7))));
}

TEST(RenderOverlay, OverlayMapUpsamplesValuesBilinearly) {
    const cv::Mat base = solid(8, 8, cv::Vec3b(0, 0, 0));
    const at::Tensor m = torch::tensor({{0.f, 1.f}, {1.f, 2.f}});
    const Range r{0.f, 2.f};
    const cv::Mat out = overlay_map(base, m, Colormap::Gray, r, 1.f);
    ASSERT_EQ(out.size(), cv::Size(8, 8));
    // Corners keep the corner values (half-pixel centres, clamped at the border).
    EXPECT_EQ(out.at<cv::Vec3b>(0, 0), cv::Vec3b(0, 0, 0));
    EXPECT_EQ(out.at<cv::Vec3b>(7, 7), cv::Vec3b(255, 255, 255));
    EXPECT_EQ(out.at<cv::Vec3b>(0, 7), cv::Vec3b(128, 128, 128));
    // Along the top row, values rise monotonically from 0 to 1.
    for (int x = 1; x < 8; ++x)
        EXPECT_GE(out.at<cv::Vec3b>(0, x)[0], out.at<cv::Vec3b>(0, x - 1)[0]);
    // alpha 0 leaves the base alone.
    EXPECT_TRUE(equal_images(overlay_map(base, m, Colormap::Viridis, r, 0.f), base));
}

// ---------------------------------------------------------------------------------------------
// Plots

TEST(RenderPlot, BarStripHeightsAndColours) {
    const at::Tensor v = torch::tensor({0.f, 1.f, 2.f, 4.f});
    const cv::Mat strip = bar_strip(v, 40, Colormap::Viridis, 3, 1);
    ASSERT_EQ(strip.size(), cv::Size(4 * 3 + 3, 40));
    const auto& table = colormap_table(Colormap::Viridis);
    const cv::Vec3b white(255, 255, 255);
    EXPECT_TRUE(all_pixels(strip, cv::Rect(0, 0, 3, 40), white));       // value 0: no bar
    EXPECT_TRUE(all_pixels(strip, cv::Rect(4, 30, 3, 10), table[64]));  // 1 of 4: 10 px
    EXPECT_TRUE(all_pixels(strip, cv::Rect(4, 0, 3, 30), white));
    EXPECT_TRUE(all_pixels(strip, cv::Rect(8, 20, 3, 20), table[128]));  // 2 of 4: 20 px
    EXPECT_TRUE(all_pixels(strip, cv::Rect(12, 0, 3, 40), table[255]));  // full height
    EXPECT_TRUE(all_pixels(strip, cv::Rect(3, 0, 1, 40), white));        // gaps

    // Signed values: bars go up and down from the zero line at half height.
    const cv::Mat signed_strip =
        bar_strip(torch::tensor({-1.f, 1.f}), 20, Colormap::Diverging, 2, 0);
    const auto& div = colormap_table(Colormap::Diverging);
    EXPECT_TRUE(all_pixels(signed_strip, cv::Rect(0, 10, 2, 10), div[0]));
    EXPECT_TRUE(all_pixels(signed_strip, cv::Rect(2, 0, 2, 10), div[255]));
    EXPECT_THROW(bar_strip(torch::empty({0}), 10, Colormap::Gray), Error);
}

TEST(RenderPlot, ScatterDrawsEveryClassColourAndALegend) {
    const at::Tensor xy =
        torch::tensor({{0.f, 0.f}, {10.f, 0.f}, {0.f, 10.f}, {10.f, 10.f}, {5.f, 5.f}, {2.f, 8.f}})
            .reshape({6, 2});
    const std::vector<int64_t> labels = {0, 1, 2, 0, 1, 2};
    const std::vector<std::string> names = {"T-shirt", "Trouser", "Pullover"};
    const cv::Mat img = scatter_plot(xy, labels, names, 200, 4);
    EXPECT_EQ(img.rows, 200);
    EXPECT_GT(img.cols, 200 + 40);  // the legend panel
    for (int64_t k = 0; k < 3; ++k) {
        const cv::Vec3b c = vec(category_colour(k));
        EXPECT_GT(count_colour(img(cv::Rect(0, 0, 200, 200)), c), 20) << "class " << k;
        EXPECT_GT(count_colour(img(cv::Rect(200, 0, img.cols - 200, img.rows)), c), 50)
            << "legend swatch " << k;
    }
    // (0,0) is bottom-left, (10,10) top-right, and a class-0 point sits at each.
    const cv::Mat plot = img(cv::Rect(0, 0, 200, 200));
    const cv::Vec3b c0 = vec(category_colour(0));
    EXPECT_GT(count_colour(plot(cv::Rect(0, 100, 100, 100)), c0), 0);
    EXPECT_GT(count_colour(plot(cv::Rect(100, 0, 100, 100)), c0), 0);
    // Same input, same bytes.
    EXPECT_TRUE(equal_images(scatter_plot(xy, labels, names, 200, 4), img));
    EXPECT_THROW(scatter_plot(xy, {0, 1}, names, 200, 4), Error);
    EXPECT_THROW(scatter_plot(torch::zeros({3, 3}), {}, {}, 200, 4), Error);
}

TEST(RenderPlot, CategoryPaletteIsDistinct) {
    for (int64_t a = 0; a < 12; ++a) {
        for (int64_t b = a + 1; b < 12; ++b) {
            EXPECT_GT(max_channel_diff(vec(category_colour(a)), vec(category_colour(b))), 40)
                << a << " vs " << b;
        }
        EXPECT_GT(max_channel_diff(vec(category_colour(a)), vec(category_colour(-1))), 40);
    }
    EXPECT_NE(vec(category_colour(12)), vec(category_colour(13)));
}

TEST(RenderPlot, ThumbnailMapPlacesImagesAtTheirPositions) {
    const at::Tensor xy = torch::tensor({{0.f, 0.f}, {1.f, 1.f}});
    const cv::Vec3b red(250, 0, 0), blue(0, 0, 250);
    const std::vector<cv::Mat> thumbs = {solid(8, 8, red), solid(8, 8, blue)};
    const cv::Mat img = thumbnail_map(xy, thumbs, 100, 16);
    ASSERT_EQ(img.size(), cv::Size(100, 100));
    // Point 0 is bottom-left, point 1 top-right; each thumbnail is 16x16.
    EXPECT_EQ(count_colour(img(cv::Rect(0, 50, 50, 50)), red), 256);
    EXPECT_EQ(count_colour(img(cv::Rect(50, 0, 50, 50)), blue), 256);
    // Frames in class colours when labels are given.
    const cv::Mat framed = thumbnail_map(xy, thumbs, 100, 16, {3, 4});
    EXPECT_GT(count_colour(framed, vec(category_colour(3))), 40);
    // Overlapping thumbnails: only the first one is kept.
    const at::Tensor same = torch::tensor({{0.f, 0.f}, {0.f, 0.f}});
    const cv::Mat sparse = thumbnail_map(same, thumbs, 100, 16, {}, true);
    EXPECT_EQ(count_colour(sparse, red), 256);
    EXPECT_EQ(count_colour(sparse, blue), 0);
    EXPECT_THROW(thumbnail_map(xy, {thumbs[0]}, 100, 16), Error);
}

TEST(RenderPlot, AxisEndsGetTheDigitsThatTellThemApart) {
    EXPECT_EQ(render_detail::format_range_ends(0.f, 1.f), std::make_pair(std::string("0"), std::string("1")));
    EXPECT_EQ(render_detail::format_range_ends(0.1115f, 0.1124f), std::make_pair(std::string("0.1115"), std::string("0.1124")));
    EXPECT_EQ(render_detail::format_range_ends(0.25f, 0.25f), std::make_pair(std::string("0.25"), std::string("0.25")));
}

TEST(RenderPlot, LinePlotDrawsSeriesColours) {
    const at::Tensor ys = torch::stack({torch::full({10}, 0.5f), torch::linspace(0, 1, 10)});
    const cv::Mat img = line_plot(ys, 200, 100, {"p(cat)", "p(dog)"}, Range{0.f, 1.f});
    ASSERT_EQ(img.size(), cv::Size(200, 100));
    EXPECT_GT(count_colour(img, vec(category_colour(0))), 100);  // the flat line
    EXPECT_GT(count_colour(img, vec(category_colour(1))), 10);
    EXPECT_THROW(line_plot(ys, 200, 100, {"one name"}), Error);
}

TEST(RenderPlot, ColorbarShowsTheTableTopToBottom) {
    const cv::Mat heat = apply_colormap(torch::rand({64, 64}), Colormap::Inferno, 0.f, 1.f);
    const cv::Mat img = heat_with_colorbar(heat, Colormap::Inferno, Range{0.f, 1.f}, 10);
    EXPECT_EQ(img.rows, 64);
    EXPECT_GT(img.cols, 64 + 10 + 8);
    EXPECT_TRUE(equal_images(img(cv::Rect(0, 0, 64, 64)), heat));
    const auto& table = colormap_table(Colormap::Inferno);
    const int bar_x = 64 + 4;
    EXPECT_TRUE(all_pixels(img, cv::Rect(bar_x, 0, 10, 1), table[255]));
    EXPECT_TRUE(all_pixels(img, cv::Rect(bar_x, 63, 10, 1), table[0]));
    // A tiny picture: the canvas grows so both labels fit, the picture stays at the top.
    const cv::Mat tiny =
        heat_with_colorbar(heat(cv::Rect(0, 0, 4, 4)), Colormap::Inferno, Range{0.f, 1.f});
    EXPECT_GT(tiny.rows, 16);
    EXPECT_TRUE(equal_images(tiny(cv::Rect(0, 0, 4, 4)), heat(cv::Rect(0, 0, 4, 4))));
}

TEST(RenderText, PutLabelDrawsWithOutlineAndClips) {
    cv::Mat img(30, 80, CV_8UC3, cv::Scalar(128, 128, 128));
    put_label(img, "conv1", cv::Point(2, 20), 0.5);
    int light = 0, dark = 0;
    for (int y = 0; y < img.rows; ++y)
        for (int x = 0; x < img.cols; ++x) {
            light += img.at<cv::Vec3b>(y, x)[0] > 200;
            dark += img.at<cv::Vec3b>(y, x)[0] < 60;
        }
    EXPECT_GT(light, 5);                                   // the text
    EXPECT_GT(dark, 5);                                    // the outline
    put_label(img, "far away", cv::Point(500, 500), 0.5);  // off the image: no crash
    const cv::Size s = label_size("conv1", 0.5);
    EXPECT_GT(s.width, 20);
    EXPECT_GT(s.height, 8);
}

// ---------------------------------------------------------------------------------------------
// PNG

TEST(RenderPng, RoundTripThroughImreadAndNoTempFile) {
    const fs::path dir = temp_folder("png");
    cv::Mat img(13, 17, CV_8UC3);
    cv::randu(img, 0, 256);
    img.at<cv::Vec3b>(0, 0) = cv::Vec3b(255, 0, 0);  // pure red in RGB
    const std::string path = (dir / "pic.png").string();
    write_png(path, img);
    const cv::Mat bgr = cv::imread(path, cv::IMREAD_UNCHANGED);
    ASSERT_FALSE(bgr.empty());
    ASSERT_EQ(bgr.type(), CV_8UC3);
    EXPECT_EQ(bgr.at<cv::Vec3b>(0, 0), cv::Vec3b(0, 0, 255));  // BGR on disk
    cv::Mat back;
    cv::cvtColor(bgr, back, cv::COLOR_BGR2RGB);
    EXPECT_TRUE(equal_images(back, img));
    // Overwriting works and only the one file is left in the folder.
    write_png(path, img);
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    ASSERT_EQ(names.size(), 1u);
    EXPECT_EQ(names[0], "pic.png");

    // Gray pictures stay one channel.
    cv::Mat gray(4, 5, CV_8UC1);
    cv::randu(gray, 0, 256);
    write_png((dir / "gray.png").string(), gray);
    EXPECT_TRUE(equal_images(cv::imread((dir / "gray.png").string(), cv::IMREAD_UNCHANGED), gray));
    fs::remove_all(dir);
}

TEST(RenderPng, BytesHaveThePngSignatureAndBadInputThrows) {
    const std::string bytes = png_bytes(solid(3, 3, cv::Vec3b(1, 2, 3)));
    ASSERT_GT(bytes.size(), 8u);
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    EXPECT_THROW(png_bytes(cv::Mat()), Error);
    EXPECT_THROW(png_bytes(cv::Mat(2, 2, CV_32FC1, cv::Scalar(0))), Error);
    const fs::path dir = temp_folder("png_missing");
    EXPECT_THROW(write_png((dir / "no" / "such" / "dir" / "x.png").string(), solid(2, 2, {})),
                 Error);
    fs::remove_all(dir);
}

TEST(RenderPng, WritePngsWritesEveryFileAndRethrowsTheFirstError) {
    const fs::path dir = temp_folder("pngs");
    std::vector<std::pair<std::string, cv::Mat>> files;
    for (int i = 0; i < 9; ++i) {
        cv::Mat img(5 + i, 7, CV_8UC3);
        cv::randu(img, 0, 256);
        files.emplace_back((dir / ("p" + std::to_string(i) + ".png")).string(), img);
    }
    write_pngs(files, 3);
    for (const auto& f : files) {
        // The same bytes as one write_png on one thread.
        std::string disk;
        {
            std::ifstream in(f.first, std::ios::binary);
            disk.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        }
        EXPECT_EQ(disk, png_bytes(f.second)) << f.first;
    }
    write_pngs({});  // nothing to do
    // A bad entry fails, the others are still written, and the error is the first bad one's.
    auto bad = files;
    for (const auto& f : files) fs::remove(f.first);
    bad[2].second = cv::Mat();
    bad[6].first = (dir / "missing" / "x.png").string();
    try {
        write_pngs(bad, 4);
        ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("empty"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(fs::exists(files[8].first));
    EXPECT_FALSE(fs::exists(files[2].first));
    fs::remove_all(dir);
}
