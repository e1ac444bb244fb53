#pragma once
// Pictures: colormaps, value ranges, tile grids, overlays, bar strips, scatter and thumbnail
// maps, colorbars, text labels and PNG files. The one place where pixels are made; every
// command and the server render through these functions.
//
// Conventions used throughout this header:
// - A picture is a cv::Mat of type CV_8UC3 in RGB channel order (not OpenCV's usual BGR).
//   Only write_png / png_bytes convert to BGR, when encoding. Functions that accept pictures
//   also accept CV_8UC1 (gray, expanded to three equal channels) unless stated otherwise.
// - Colours (cv::Scalar) are RGB too: cv::Scalar(r, g, b), values 0..255.
// - Value tensors (maps, filters, coordinates) may have any floating or integer dtype and live
//   on any device; they are copied to CPU float32 first. Undefined tensors and wrong ranks throw
//   convscope::Error naming the expected shape.
// - Value -> colour: index = round((v - lo) / (hi - lo) * 255), clamped to [0, 255], into a
//   256-entry table (see colour_index). If hi <= lo (a constant input), the index is 128, the
//   middle of the map. Pictures paint NaN and infinite values in kNonFiniteColour (magenta, in
//   no colormap), which only appear with --allow-nonfinite (finite.hpp) or a model that makes them. Diverging maps always use the symmetric range [-m, m] with
//   m = max(|lo|, |hi|), so 0 is exactly white.
// - Returned pictures own their pixels (never views of the inputs). All functions are
//   thread-safe (no shared mutable state) and deterministic.
#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <opencv2/core.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace convscope {

// ---------------------------------------------------------------------------------------------
// Colormaps

enum class Colormap {
    Viridis,    // perceptually uniform dark blue -> green -> yellow (default for magnitudes)
    Inferno,    // black -> purple -> orange -> pale yellow
    Magma,      // black -> purple -> pink -> pale cream
    Turbo,      // rainbow-like, high contrast (not perceptually uniform)
    Gray,       // black -> white; index i is (i, i, i)
    Diverging,  // blue -> white (zero) -> red, for signed values (weights, attributions)
};

// Names accepted by parse_colormap, in enum order: "viridis", "inferno", "magma", "turbo",
// "gray", "diverging".
const std::vector<std::string>& colormap_names();
// The canonical lower-case name of a colormap.
const std::string& colormap_name(Colormap cmap);
// Parses a colormap name (case-insensitive; "grey" and "bwr" are accepted aliases of "gray" and
// "diverging"). Throws UsageError listing the valid names.
Colormap parse_colormap(const std::string& name);

// The 256-entry RGB table of a colormap. Viridis, Inferno, Magma and Turbo are OpenCV's
// built-in tables (the published matplotlib / Google colours: viridis runs from #440154 to
// #fde725). Gray is (i,i,i). Diverging interpolates linearly from blue (index 0) to white
// (indices 127 and 128 are both exactly white) and from white to red (index 255). Built once.
const std::array<cv::Vec3b, 256>& colormap_table(Colormap cmap);

// ---------------------------------------------------------------------------------------------
// Value ranges

// The colour of NaN and infinite values in every picture of values (RGB).
inline const cv::Vec3b kNonFiniteColour(255, 0, 255);

struct Range {
    float lo = 0.f;
    float hi = 1.f;
};

// The table index of value v for range r: round((v - lo) / (hi - lo) * 255) clamped to
// [0, 255], with 128 when hi <= lo or v is NaN. +Inf gives 255 and -Inf gives 0. Computed in
// double precision, so 1/3 of the range gives exactly 85.
int colour_index(float v, Range r);
// The range a colormap really uses for r: r itself, except for Diverging, where it is [-m, m]
// with m = max(|lo|, |hi|).
Range effective_range(Colormap cmap, Range r);
// The colour of value v (colormap_table(cmap)[colour_index(v, effective_range(cmap, r))]).
cv::Vec3b colour_of(float v, Colormap cmap, Range r);

// Minimum and maximum of the finite values of t (any shape). {0, 0} when t is empty or has no
// finite value. Cost: one pass over t.
Range value_range(const at::Tensor& t);
// [-m, m] with m the largest |v| over finite values (m = 0 for empty/all-zero input). One pass.
Range symmetric_range(const at::Tensor& t);
// Percentiles of the finite values: {q(lo_pct), q(hi_pct)} with percentages in [0, 100]
// (linear interpolation between order statistics, as numpy's default). Useful to keep a few
// extreme pixels from washing out a saliency map. Cost: a sort, O(n log n).
Range percentile_range(const at::Tensor& t, double lo_pct, double hi_pct);
// [-m, m] with m the pct-th percentile of |v| over finite values. Cost: a sort.
Range symmetric_percentile_range(const at::Tensor& t, double pct);
// The natural range for showing t with cmap: symmetric_range for Diverging, else value_range.
Range auto_range(Colormap cmap, const at::Tensor& t);

// ---------------------------------------------------------------------------------------------
// Value tensors -> pictures

// values_hw [H,W] (any real dtype) -> [H,W] picture coloured by cmap over [lo, hi] (see the
// conventions above; Diverging symmetrises the range). Cost: one pass, O(H*W).
cv::Mat apply_colormap(const at::Tensor& values_hw, Colormap cmap, float lo, float hi);
cv::Mat apply_colormap(const at::Tensor& values_hw, Colormap cmap, Range r);
// As above with auto_range(cmap, values_hw).
cv::Mat apply_colormap(const at::Tensor& values_hw, Colormap cmap);

// maps_nhw [N,H,W] (e.g. one layer's activation channels, or 2-D filter slices) -> N pictures
// of H*factor x W*factor. shared_range: one auto_range over all maps (compare channels) or one
// per map (see each map's structure). Cost: O(N*H*W*factor^2).
std::vector<cv::Mat> colormap_tiles(const at::Tensor& maps_nhw, Colormap cmap, bool shared_range,
                                    int factor = 1);

// hwc [H,W,C] uint8 with C = 1 or 3, or [H,W] uint8 (e.g. Preprocess::to_display output for one
// image) -> picture. Gray becomes three equal channels; C = 3 is taken as RGB. Copies.
cv::Mat image_from_hwc_uint8(const at::Tensor& hwc);
// chw [C,H,W] with C = 1 or 3 (or [H,W]), real dtype -> picture. C = 3: each channel is mapped
// linearly with one shared range r (byte = round((v - lo) / (hi - lo) * 255), clamped; 128 when
// hi <= lo) and taken as RGB -- e.g. a first-layer filter with its value_range or
// symmetric_range. C = 1: coloured by single_channel_cmap over r. Cost: O(C*H*W).
cv::Mat image_from_chw_float(const at::Tensor& chw, Range r,
                             Colormap single_channel_cmap = Colormap::Gray);
// The inverse view: picture (CV_8UC1/3) -> [H,W,3] uint8 tensor (RGB), a copy. For saving a
// rendered picture as NPY or comparing pictures in tests.
at::Tensor tensor_from_image(const cv::Mat& img);

// ---------------------------------------------------------------------------------------------
// Resizing

// Replicates each pixel into a factor x factor block (exact, no interpolation). Any cv::Mat type
// (gray, RGB, float). factor >= 1, else Error. Cost: O(output pixels).
cv::Mat upscale_nearest(const cv::Mat& img, int factor);
// The smallest integer factor >= 1 with max(h, w) * factor >= target_px, so that a small map or
// a 3x3 filter becomes readable (3x3 -> 22 for 64 px, 28x28 -> 3, anything >= 64 -> 1).
int readable_factor(int h, int w, int target_px = 64);
// Scales img so that its longer side is max_side, keeping the aspect ratio: nearest-neighbour
// when enlarging by an integer factor (crisp pixels), area averaging when shrinking, bilinear
// otherwise. Returns a copy of img if it already has that size.
cv::Mat resize_to_fit(const cv::Mat& img, int max_side);

// ---------------------------------------------------------------------------------------------
// Tile grids

// Light gray between tiles: the default, for dark-to-bright maps (viridis, inferno, ...).
inline const cv::Scalar kSeparatorColour(224, 224, 224);
// Dark gray between tiles whose background is white (diverging maps: zero is white).
inline const cv::Scalar kDarkSeparatorColour(96, 96, 96);
// The separator that stands out against tiles coloured with cmap: kDarkSeparatorColour for
// Diverging, a muted blue (110, 140, 190) for Gray (distinct from every gray), else
// kSeparatorColour.
cv::Scalar separator_colour_for(Colormap cmap);

// Lays tiles out row-major in `cols` columns (0 = near-square: ceil(sqrt(n))) with separator_px
// lines of separator_colour between tiles (not around the outside). Every cell has the size of
// the largest tile; smaller tiles are centred in their cell, the rest of the cell and empty
// cells of the last row are separator_colour. Tile (r, c) starts at
// x = c * (cell_w + separator_px), y = r * (cell_h + separator_px). Tiles: CV_8UC1 or CV_8UC3.
// Throws Error for no tiles. Cost: O(output pixels).
cv::Mat tile_grid(const std::vector<cv::Mat>& tiles, int cols = 0, int separator_px = 1,
                  const cv::Scalar& separator_colour = kSeparatorColour);

// Options for a labelled grid (montages: one label per row, per column and/or per tile).
struct GridOptions {
    int cols = 0;  // 0 = near-square
    int separator_px = 1;
    cv::Scalar separator_colour = kSeparatorColour;
    std::vector<std::string> row_labels;     // empty, or one per row: drawn in a left margin
    std::vector<std::string> col_labels;     // empty, or one per column: drawn in a top band
    std::vector<std::string> tile_captions;  // empty, or one per tile: drawn under each tile
    double label_scale = 0.4;                // font scale (0.4: about 9 px high)
    cv::Scalar label_colour = cv::Scalar(20, 20, 20);      // text in the margins
    cv::Scalar margin_colour = cv::Scalar(255, 255, 255);  // margin and caption background
};

// Where things landed in a grid (for clickable images in the web UI and for tests).
struct GridLayout {
    int rows = 0, cols = 0;
    cv::Size cell;                     // size of one cell (largest tile)
    std::vector<cv::Rect> cell_rects;  // per tile: its cell (the tile is centred in it)
};

// Like tile_grid with labels. The left margin is as wide as the widest row label, the top band
// as high as one line of text; captions add one line under each cell. Text is ASCII (Hershey
// font; other characters show as '?'). Throws Error if a label list has the wrong length.
// Fills *layout if given. Cost: O(output pixels).
cv::Mat labelled_grid(const std::vector<cv::Mat>& tiles, const GridOptions& opts,
                      GridLayout* layout = nullptr);

// Places pictures left to right, top-aligned, with gap_px columns of background between them
// (e.g. an input beside the feature maps it produced). The canvas is as high as the tallest
// picture; below shorter ones it is background. Picture i starts at x = sum of the widths of
// pictures 0..i-1 + i * gap_px, y = 0. CV_8UC1 pictures are expanded to RGB. Throws Error for no
// pictures or an empty one. Cost: O(output pixels).
cv::Mat side_by_side(const std::vector<cv::Mat>& pictures, int gap_px = 4,
                     const cv::Scalar& background = cv::Scalar(255, 255, 255));

// ---------------------------------------------------------------------------------------------
// Overlays

// (1 - alpha) * base + alpha * heat per channel, rounded. heat is resized to base's size with
// bilinear interpolation if the sizes differ. alpha in [0, 1] (clamped): 0 gives base and 1
// gives heat exactly. Cost: O(pixels).
cv::Mat overlay(const cv::Mat& base_rgb, const cv::Mat& heat_rgb, float alpha);
// Colours map_hw [H,W] (any resolution, e.g. a 7x7 Grad-CAM or an occlusion map) with cmap over
// r after upsampling the values (not the colours) to base's size with bilinear interpolation
// (pixel centres aligned, as torch's align_corners=false), then overlays it with alpha.
cv::Mat overlay_map(const cv::Mat& base_rgb, const at::Tensor& map_hw, Colormap cmap, Range r,
                    float alpha = 0.5f);

// A segmentation over base_rgb: every pixel tinted with category_colour of its class in
// classes_hw [h,w] (int64, any resolution: scaled to base's size, nearest) with alpha, and the
// pixels of region_hw [h,w] (bool, optional) that touch a pixel outside it drawn white: the
// predicted mask with the explained region outlined.
cv::Mat segmentation_overlay(const cv::Mat& base_rgb, const at::Tensor& classes_hw, const at::Tensor& region_hw,
                             float alpha = 0.45f);

// ---------------------------------------------------------------------------------------------
// Plots

// One vertical bar per unit of values_f [F] (a 1-D layer's activations): bar_width px wide, gap
// px apart, on a white background, height `height`. Bar heights are proportional to the value
// over the span [min(0, lo), max(0, hi)] of value range [lo, hi]; a zero line (gray) is drawn
// where 0 lies when values have both signs. Bars are coloured by value with cmap over
// auto_range(cmap, values); non-finite values draw no bar. Width = F * bar_width + (F - 1) * gap.
// Throws Error for F = 0. Cost: O(F * height).
cv::Mat bar_strip(const at::Tensor& values_f, int height, Colormap cmap, int bar_width = 3,
                  int gap = 1);

// The categorical palette: 12 distinct colours for labels 0..11, then further colours spread by
// the golden angle in hue. A negative label (unknown) is mid gray (150, 150, 150). RGB order.
cv::Scalar category_colour(int64_t label);

// Scatter plot of xy [N,2] (e.g. a t-SNE embedding) in a size_px x size_px white square, y up,
// aspect ratio kept, filled discs of point_radius coloured by category_colour(labels[i]); drawn
// in index order. labels: empty (all points in colour 0, no legend) or N values (-1 = unknown).
// A legend to the right names the classes present (class_names[label], or the number when
// class_names is too short; "unknown" for -1), so the picture is wider than size_px and at least
// as high as the legend. Non-finite points are skipped. Throws Error for a wrong shape or label
// count. Cost: O(N * radius^2 + size_px^2).
cv::Mat scatter_plot(const at::Tensor& xy, const std::vector<int64_t>& labels,
                     const std::vector<std::string>& class_names, int size_px = 800,
                     int point_radius = 3);

// Places thumbs[i] (pictures, any size; resize_to_fit to thumb_px) centred at xy[i] in a
// size_px x size_px white square (same mapping as scatter_plot, with a margin of thumb_px / 2).
// Drawn in index order, later ones on top. labels: empty, or N values giving each thumbnail a
// 1-px frame in its category_colour. skip_overlapping: divide the canvas into thumb_px x thumb_px
// cells, keep only the first thumbnail whose position falls in each cell and centre it there
// (a sparser map without overlaps; positions move by at most thumb_px / 2).
// Cost: O(N * thumb_px^2).
cv::Mat thumbnail_map(const at::Tensor& xy, const std::vector<cv::Mat>& thumbs, int size_px = 1200,
                      int thumb_px = 32, const std::vector<int64_t>& labels = {},
                      bool skip_overlapping = false);

// A line plot of ys [N] or [S,N] (S series of N points, e.g. class probability against occluder
// position) on a white width x height canvas: a gray frame, the y range's ends written at the
// left, series i drawn in category_colour(i) through points (x_j, y_j) spaced evenly across the
// frame, and a legend of series_names (if given, one per series) in the top-right corner.
// y_range: fixed axis limits (e.g. {0, 1} for probabilities) or nullopt for the values' range.
cv::Mat line_plot(const at::Tensor& ys, int width = 480, int height = 240,
                  const std::vector<std::string>& series_names = {},
                  std::optional<Range> y_range = std::nullopt);

// img (a heat map already coloured with cmap over r, usually upscaled) with a vertical colorbar
// to its right: bar_width px wide, as high as img, top = hi, bottom = lo of
// effective_range(cmap, r), with the two ends written beside it ("%.3g"; also "0" at the centre
// for Diverging). White background; the canvas (and the bar) grows downwards if img is too short
// for the labels (about 15 px per label); img stays at the top-left. Cost: O(pixels).
cv::Mat heat_with_colorbar(const cv::Mat& img, Colormap cmap, Range r, int bar_width = 12);

// ---------------------------------------------------------------------------------------------
// Text

// Draws ASCII text with its baseline-left corner at origin (cv::putText's convention), in colour
// (RGB), with a 1-px dark outline for legibility on any background when outline is true. scale
// 0.4 is about 9 px high. Parts outside the image are clipped.
void put_label(cv::Mat& img, const std::string& text, cv::Point origin, double scale = 0.4,
               const cv::Scalar& colour = cv::Scalar(255, 255, 255), bool outline = true);
// Size of the box put_label fills: width x (height above the baseline + descent), outline
// included.
cv::Size label_size(const std::string& text, double scale = 0.4);

// ---------------------------------------------------------------------------------------------
// PNG

// PNG bytes of a picture: CV_8UC3 (RGB), CV_8UC1 (gray) or CV_8UC4 (RGBA); converted to OpenCV's
// BGR order for encoding. Throws Error for an empty picture, another type, or an encoder
// failure. Cost: zlib compression, roughly 10-50 ms per megapixel.
std::string png_bytes(const cv::Mat& rgb);
// Writes png_bytes(rgb) to path atomically (write_file_atomic: temp file + rename), so no half
// written PNG is ever visible. Throws Error as png_bytes, or naming the path if writing fails.
void write_png(const std::string& path, const cv::Mat& rgb);
// Writes many pictures, each as write_png(path, picture) (atomic), on up to `threads` threads at
// once (0 = max(4, 2 * at::get_num_threads())): PNG compression dominates the CPU time when a
// command writes dozens of pictures, and each atomic write waits for the disk (fsync), so more
// workers than cores keep the cores busy. Every file is attempted; afterwards the first error (in
// list order) is rethrown. The bytes written do not depend on the thread count.
void write_pngs(const std::vector<std::pair<std::string, cv::Mat>>& files, int threads = 0);

}  // namespace convscope
