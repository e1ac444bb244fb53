#include "convscope/runtime/render.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <thread>

#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "runtime/detail/render_util.hpp"

namespace convscope {

using namespace render_detail;  // render.cpp and render_plots.cpp share these

// ---------------------------------------------------------------------------------------------
// Colormaps

namespace {
constexpr EnumTable<Colormap, 8> kColormapNames = {{{Colormap::Viridis, "viridis"},
                                                    {Colormap::Inferno, "inferno"},
                                                    {Colormap::Magma, "magma"},
                                                    {Colormap::Turbo, "turbo"},
                                                    {Colormap::Gray, "gray"},
                                                    {Colormap::Diverging, "diverging"},
                                                    {Colormap::Gray, "grey"},
                                                    {Colormap::Diverging, "bwr"}}};
}  // namespace

const std::vector<std::string>& colormap_names() {
    static const std::vector<std::string> names = enum_names(kColormapNames);
    return names;
}

const std::string& colormap_name(Colormap cmap) {
    return colormap_names().at(static_cast<size_t>(cmap));
}

Colormap parse_colormap(const std::string& name) { return parse_enum(kColormapNames, name, "colormap"); }

const std::array<cv::Vec3b, 256>& colormap_table(Colormap cmap) {
    static const std::array<std::array<cv::Vec3b, 256>, 6> tables = {
        build_table(Colormap::Viridis), build_table(Colormap::Inferno),
        build_table(Colormap::Magma),   build_table(Colormap::Turbo),
        build_table(Colormap::Gray),    build_table(Colormap::Diverging)};
    return tables.at(static_cast<size_t>(cmap));
}

cv::Scalar separator_colour_for(Colormap cmap) {
    switch (cmap) {
        case Colormap::Diverging:
            return kDarkSeparatorColour;
        case Colormap::Gray:
            return cv::Scalar(110, 140, 190);
        default:
            return kSeparatorColour;
    }
}

// ---------------------------------------------------------------------------------------------
// Value ranges

int colour_index(float v, Range r) {
    if (!(r.hi > r.lo) || std::isnan(v)) return 128;
    const double t = (static_cast<double>(v) - r.lo) / (static_cast<double>(r.hi) - r.lo);
    if (!(t > 0)) return 0;
    if (t >= 1) return 255;
    return static_cast<int>(std::lround(t * 255.0));
}

Range effective_range(Colormap cmap, Range r) {
    if (cmap != Colormap::Diverging) return r;
    const float m = std::max(std::fabs(r.lo), std::fabs(r.hi));
    return Range{-m, m};
}

cv::Vec3b colour_of(float v, Colormap cmap, Range r) {
    return colormap_table(cmap)[colour_index(v, effective_range(cmap, r))];
}

Range value_range(const at::Tensor& t) {
    const at::Tensor f = cpu_float(t, "value_range");
    const float* p = f.data_ptr<float>();
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (int64_t i = 0, n = f.numel(); i < n; ++i) {
        if (!std::isfinite(p[i])) continue;
        lo = std::min(lo, p[i]);
        hi = std::max(hi, p[i]);
    }
    if (lo > hi) return Range{0.f, 0.f};
    return Range{lo, hi};
}

Range symmetric_range(const at::Tensor& t) {
    const at::Tensor f = cpu_float(t, "symmetric_range");
    const float* p = f.data_ptr<float>();
    float m = 0.f;
    for (int64_t i = 0, n = f.numel(); i < n; ++i) {
        if (std::isfinite(p[i])) m = std::max(m, std::fabs(p[i]));
    }
    return Range{-m, m};
}

Range percentile_range(const at::Tensor& t, double lo_pct, double hi_pct) {
    const at::Tensor v = finite_values(t);
    if (v.numel() == 0) return Range{0.f, 0.f};
    const at::Tensor sorted = std::get<0>(v.sort()).contiguous();
    return Range{static_cast<float>(percentile_of_sorted(sorted, lo_pct)),
                 static_cast<float>(percentile_of_sorted(sorted, hi_pct))};
}

Range symmetric_percentile_range(const at::Tensor& t, double pct) {
    const at::Tensor v = finite_values(t).abs();
    if (v.numel() == 0) return Range{0.f, 0.f};
    const at::Tensor sorted = std::get<0>(v.sort()).contiguous();
    const float m = static_cast<float>(percentile_of_sorted(sorted, pct));
    return Range{-m, m};
}

Range auto_range(Colormap cmap, const at::Tensor& t) {
    return cmap == Colormap::Diverging ? symmetric_range(t) : value_range(t);
}

// ---------------------------------------------------------------------------------------------
// Value tensors -> pictures

cv::Mat apply_colormap(const at::Tensor& values_hw, Colormap cmap, Range r) {
    const at::Tensor v = cpu_float(values_hw, "apply_colormap");
    if (v.dim() != 2) {
        throw Error("apply_colormap: expected a 2-D map [H,W], got " + shape_of(v));
    }
    return colourise(mat_view(v), cmap, r);
}

cv::Mat apply_colormap(const at::Tensor& values_hw, Colormap cmap, float lo, float hi) {
    return apply_colormap(values_hw, cmap, Range{lo, hi});
}

cv::Mat apply_colormap(const at::Tensor& values_hw, Colormap cmap) {
    return apply_colormap(values_hw, cmap, auto_range(cmap, values_hw));
}

std::vector<cv::Mat> colormap_tiles(const at::Tensor& maps_nhw, Colormap cmap, bool shared_range,
                                    int factor) {
    at::Tensor maps = cpu_float(maps_nhw, "colormap_tiles");
    if (maps.dim() == 2) maps = maps.unsqueeze(0);
    if (maps.dim() != 3) {
        throw Error("colormap_tiles: expected maps of shape [N,H,W], got " + shape_of(maps));
    }
    if (factor < 1) throw Error("colormap_tiles: factor must be >= 1");
    const Range shared = auto_range(cmap, maps);
    std::vector<cv::Mat> tiles;
    tiles.reserve(static_cast<size_t>(maps.size(0)));
    for (int64_t i = 0; i < maps.size(0); ++i) {
        const at::Tensor m = maps[i];
        const Range r = shared_range ? shared : auto_range(cmap, m);
        cv::Mat tile = colourise(mat_view(m), cmap, r);
        tiles.push_back(factor > 1 ? upscale_nearest(tile, factor) : tile);
    }
    return tiles;
}

cv::Mat image_from_hwc_uint8(const at::Tensor& hwc) {
    if (!hwc.defined()) throw Error("image_from_hwc_uint8: the tensor is undefined");
    if (hwc.scalar_type() != at::kByte) {
        throw Error("image_from_hwc_uint8: expected a uint8 tensor [H,W,C], got dtype " +
                    std::string(c10::toString(hwc.scalar_type())));
    }
    at::Tensor t = hwc.detach().to(at::kCPU).contiguous();
    if (t.dim() == 2) t = t.unsqueeze(2);
    if (t.dim() != 3 || (t.size(2) != 1 && t.size(2) != 3)) {
        throw Error("image_from_hwc_uint8: expected [H,W,1] or [H,W,3] (or [H,W]), got " +
                    shape_of(hwc));
    }
    const int h = static_cast<int>(t.size(0)), w = static_cast<int>(t.size(1));
    if (h == 0 || w == 0) throw Error("image_from_hwc_uint8: the image is empty");
    const cv::Mat view(h, w, t.size(2) == 3 ? CV_8UC3 : CV_8UC1, t.data_ptr<uint8_t>());
    if (t.size(2) == 3) return view.clone();
    return as_rgb(view, "image_from_hwc_uint8");
}

cv::Mat image_from_chw_float(const at::Tensor& chw, Range r, Colormap single_channel_cmap) {
    at::Tensor t = cpu_float(chw, "image_from_chw_float");
    if (t.dim() == 2) t = t.unsqueeze(0);
    if (t.dim() != 3 || (t.size(0) != 1 && t.size(0) != 3)) {
        throw Error("image_from_chw_float: expected [1,H,W] or [3,H,W] (or [H,W]), got " +
                    shape_of(chw));
    }
    if (t.size(0) == 1) return colourise(mat_view(t[0]), single_channel_cmap, r);
    const int h = static_cast<int>(t.size(1)), w = static_cast<int>(t.size(2));
    const float* p = t.data_ptr<float>();
    const int64_t plane = static_cast<int64_t>(h) * w;
    cv::Mat out(h, w, CV_8UC3);
    for (int y = 0; y < h; ++y) {
        cv::Vec3b* dst = out.ptr<cv::Vec3b>(y);
        for (int x = 0; x < w; ++x) {
            const int64_t i = static_cast<int64_t>(y) * w + x;
            if (!std::isfinite(p[i]) || !std::isfinite(p[plane + i]) || !std::isfinite(p[2 * plane + i])) {
                dst[x] = kNonFiniteColour;
                continue;
            }
            for (int c = 0; c < 3; ++c) {
                dst[x][c] = static_cast<uchar>(colour_index(p[c * plane + i], r));
            }
        }
    }
    return out;
}

at::Tensor tensor_from_image(const cv::Mat& img) {
    const cv::Mat rgb = as_rgb(img, "tensor_from_image");
    at::Tensor t = at::empty({rgb.rows, rgb.cols, 3}, at::kByte);
    uint8_t* dst = t.data_ptr<uint8_t>();
    const size_t row_bytes = static_cast<size_t>(rgb.cols) * 3;
    for (int y = 0; y < rgb.rows; ++y) std::memcpy(dst + y * row_bytes, rgb.ptr(y), row_bytes);
    return t;
}

// ---------------------------------------------------------------------------------------------
// Resizing

cv::Mat upscale_nearest(const cv::Mat& img, int factor) {
    if (factor < 1) {
        throw Error("upscale_nearest: factor must be >= 1, got " + std::to_string(factor));
    }
    if (img.empty()) return cv::Mat();
    if (factor == 1) return img.clone();
    cv::Mat out(img.rows * factor, img.cols * factor, img.type());
    const size_t esz = img.elemSize();
    for (int y = 0; y < img.rows; ++y) {
        const uchar* src = img.ptr(y);
        uchar* first = out.ptr(y * factor);
        // Build one output row, then repeat it factor times.
        for (int x = 0; x < img.cols; ++x) {
            for (int k = 0; k < factor; ++k) {
                std::memcpy(first + (static_cast<size_t>(x) * factor + k) * esz, src + x * esz,
                            esz);
            }
        }
        for (int k = 1; k < factor; ++k) {
            std::memcpy(out.ptr(y * factor + k), first, esz * static_cast<size_t>(out.cols));
        }
    }
    return out;
}

int readable_factor(int h, int w, int target_px) {
    const int side = std::max(h, w);
    if (side <= 0 || target_px <= side) return 1;
    return (target_px + side - 1) / side;
}

cv::Mat resize_to_fit(const cv::Mat& img, int max_side) {
    if (img.empty()) throw Error("resize_to_fit: the picture is empty");
    if (max_side < 1) throw Error("resize_to_fit: max_side must be >= 1");
    const int side = std::max(img.rows, img.cols);
    if (side == max_side) return img.clone();
    if (max_side % side == 0) return upscale_nearest(img, max_side / side);
    const double s = static_cast<double>(max_side) / side;
    const cv::Size size(std::max(1, static_cast<int>(std::lround(img.cols * s))),
                        std::max(1, static_cast<int>(std::lround(img.rows * s))));
    cv::Mat out;
    cv::resize(img, out, size, 0, 0, s < 1 ? cv::INTER_AREA : cv::INTER_LINEAR);
    return out;
}

// ---------------------------------------------------------------------------------------------
// Tile grids

cv::Mat tile_grid(const std::vector<cv::Mat>& tiles, int cols, int separator_px,
                  const cv::Scalar& separator_colour) {
    GridOptions opts;
    opts.cols = cols;
    opts.separator_px = separator_px;
    opts.separator_colour = separator_colour;
    return labelled_grid(tiles, opts);
}

cv::Mat labelled_grid(const std::vector<cv::Mat>& tiles, const GridOptions& opts,
                      GridLayout* layout) {
    if (tiles.empty()) throw Error("tile grid: there are no tiles to lay out");
    const int n = static_cast<int>(tiles.size());
    int cols = opts.cols;
    if (cols <= 0) {
        cols = 1;
        while (cols * cols < n) ++cols;
    }
    const int rows = (n + cols - 1) / cols;
    const int sep = std::max(0, opts.separator_px);
    auto check_count = [](const std::vector<std::string>& v, int want, const char* what) {
        if (!v.empty() && static_cast<int>(v.size()) != want) {
            throw Error(std::string("tile grid: ") + what + " has " + std::to_string(v.size()) +
                        " entries but the grid needs " + std::to_string(want));
        }
    };
    check_count(opts.row_labels, rows, "row_labels");
    check_count(opts.col_labels, cols, "col_labels");
    check_count(opts.tile_captions, n, "tile_captions");

    std::vector<cv::Mat> rgb;
    rgb.reserve(tiles.size());
    int cell_w = 0, cell_h = 0;
    for (const auto& t : tiles) {
        rgb.push_back(as_rgb(t, "tile grid"));
        cell_w = std::max(cell_w, t.cols);
        cell_h = std::max(cell_h, t.rows);
    }

    const int pad = 3;
    const double scale = opts.label_scale;
    const int text_h = label_size("Ag", scale).height;
    int label_w = 0;
    for (const auto& l : opts.row_labels) label_w = std::max(label_w, label_size(l, scale).width);
    if (!opts.row_labels.empty()) label_w += 2 * pad;
    const int header_h = opts.col_labels.empty() ? 0 : text_h + 2 * pad;
    const int caption_h = opts.tile_captions.empty() ? 0 : text_h + 2 * pad;
    const int x0 = label_w > 0 ? label_w + sep : 0;
    const int y0 = header_h > 0 ? header_h + sep : 0;
    const int slot_h = cell_h + caption_h;  // a cell plus its caption
    const int width = x0 + cols * cell_w + (cols - 1) * sep;
    const int height = y0 + rows * slot_h + (rows - 1) * sep;

    cv::Mat canvas(height, width, CV_8UC3, opts.separator_colour);
    if (label_w > 0) canvas(cv::Rect(0, 0, label_w, height)).setTo(opts.margin_colour);
    if (header_h > 0) canvas(cv::Rect(0, 0, width, header_h)).setTo(opts.margin_colour);
    // Text baseline for a line of height text_h whose top is at y.
    const int ascent = cv::getTextSize("Ag", kFont, scale, font_thickness(scale), nullptr).height;

    GridLayout lay;
    lay.rows = rows;
    lay.cols = cols;
    lay.cell = cv::Size(cell_w, cell_h);
    for (int i = 0; i < n; ++i) {
        const int r = i / cols, c = i % cols;
        const cv::Rect cell(x0 + c * (cell_w + sep), y0 + r * (slot_h + sep), cell_w, cell_h);
        lay.cell_rects.push_back(cell);
        const cv::Mat& t = rgb[i];
        t.copyTo(canvas(cv::Rect(cell.x + (cell_w - t.cols) / 2, cell.y + (cell_h - t.rows) / 2,
                                 t.cols, t.rows)));
        if (caption_h > 0) {
            const cv::Rect band(cell.x, cell.y + cell_h, cell_w, caption_h);
            canvas(band).setTo(opts.margin_colour);
            const std::string& text = opts.tile_captions[i];
            const int tw = label_size(text, scale).width;
            const int tx = band.x + std::max(0, (cell_w - tw) / 2);
            cv::Mat band_view = canvas(band);  // clips long captions to their own cell
            put_label(band_view, text, cv::Point(tx - band.x, pad + ascent), scale,
                      opts.label_colour, false);
        }
    }
    // The unused cells of the last row (and the separators between them) take the margin
    // colour, so that a partial row ends cleanly instead of in a block of separator colour.
    if (n < rows * cols) {
        const int first_empty = n % cols;
        const int left = x0 + first_empty * (cell_w + sep) - (first_empty > 0 ? sep : 0);
        const int top = y0 + (rows - 1) * (slot_h + sep);
        canvas(cv::Rect(left, top, width - left, height - top)).setTo(opts.margin_colour);
    }
    for (size_t r = 0; r < opts.row_labels.size(); ++r) {
        const int top = y0 + static_cast<int>(r) * (slot_h + sep);
        const int baseline = top + (cell_h + ascent) / 2;
        put_label(canvas, opts.row_labels[r], cv::Point(pad, baseline), scale, opts.label_colour,
                  false);
    }
    for (size_t c = 0; c < opts.col_labels.size(); ++c) {
        const int left = x0 + static_cast<int>(c) * (cell_w + sep);
        const int tw = label_size(opts.col_labels[c], scale).width;
        put_label(canvas, opts.col_labels[c],
                  cv::Point(left + std::max(0, (cell_w - tw) / 2), pad + ascent), scale,
                  opts.label_colour, false);
    }
    if (layout) *layout = std::move(lay);
    return canvas;
}

cv::Mat side_by_side(const std::vector<cv::Mat>& pictures, int gap_px,
                     const cv::Scalar& background) {
    if (pictures.empty()) throw Error("side_by_side: there are no pictures to place");
    if (gap_px < 0) throw Error("side_by_side: gap_px must be >= 0");
    std::vector<cv::Mat> rgb;
    rgb.reserve(pictures.size());
    int width = 0, height = 0;
    for (const auto& p : pictures) {
        rgb.push_back(as_rgb(p, "side_by_side"));
        width += rgb.back().cols;
        height = std::max(height, rgb.back().rows);
    }
    width += gap_px * static_cast<int>(pictures.size() - 1);
    cv::Mat out(height, width, CV_8UC3, background);
    int x = 0;
    for (const auto& p : rgb) {
        paste(out, p, x, 0);
        x += p.cols + gap_px;
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Overlays

cv::Mat overlay(const cv::Mat& base_rgb, const cv::Mat& heat_rgb, float alpha) {
    const cv::Mat base = as_rgb(base_rgb, "overlay (base)");
    cv::Mat heat = as_rgb(heat_rgb, "overlay (heat)");
    if (heat.size() != base.size()) {
        cv::Mat resized;
        cv::resize(heat, resized, base.size(), 0, 0, cv::INTER_LINEAR);
        heat = resized;
    }
    const float a = std::clamp(std::isnan(alpha) ? 0.f : alpha, 0.f, 1.f);
    cv::Mat out(base.rows, base.cols, CV_8UC3);
    for (int y = 0; y < base.rows; ++y) {
        const uchar* b = base.ptr(y);
        const uchar* h = heat.ptr(y);
        uchar* o = out.ptr(y);
        for (int i = 0; i < base.cols * 3; ++i) {
            // base + a * (heat - base): exactly base at a = 0 and exactly heat at a = 1.
            const float v = b[i] + a * (static_cast<float>(h[i]) - b[i]);
            o[i] = static_cast<uchar>(std::clamp(static_cast<int>(std::lround(v)), 0, 255));
        }
    }
    return out;
}

cv::Mat overlay_map(const cv::Mat& base_rgb, const at::Tensor& map_hw, Colormap cmap, Range r,
                    float alpha) {
    const cv::Mat base = as_rgb(base_rgb, "overlay_map (base)");
    const at::Tensor m = cpu_float(map_hw, "overlay_map");
    if (m.dim() != 2 || m.numel() == 0) {
        throw Error("overlay_map: expected a non-empty 2-D map [H,W], got " + shape_of(m));
    }
    cv::Mat values = mat_view(m);
    if (values.size() != base.size()) {
        cv::Mat resized;
        cv::resize(values, resized, base.size(), 0, 0, cv::INTER_LINEAR);
        values = resized;
    }
    return overlay(base, colourise(values, cmap, r), alpha);
}

// ---------------------------------------------------------------------------------------------
// Text

void put_label(cv::Mat& img, const std::string& text, cv::Point origin, double scale,
               const cv::Scalar& colour, bool outline) {
    if (img.empty() || text.empty()) return;
    const int thick = font_thickness(scale);
    if (outline) {
        cv::putText(img, text, origin, kFont, scale, kOutline, thick + 2, cv::LINE_AA);
    }
    cv::putText(img, text, origin, kFont, scale, colour, thick, cv::LINE_AA);
}

cv::Size label_size(const std::string& text, double scale) {
    int baseline = 0;
    const cv::Size s = cv::getTextSize(text, kFont, scale, font_thickness(scale) + 2, &baseline);
    return cv::Size(s.width, s.height + baseline);
}

// ---------------------------------------------------------------------------------------------
// PNG

std::string png_bytes(const cv::Mat& rgb) {
    if (rgb.empty()) throw Error("PNG: the picture is empty; nothing to encode");
    cv::Mat bgr;
    switch (rgb.type()) {
        case CV_8UC3:
            cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
            break;
        case CV_8UC4:
            cv::cvtColor(rgb, bgr, cv::COLOR_RGBA2BGRA);
            break;
        case CV_8UC1:
            bgr = rgb;
            break;
        default:
            throw Error("PNG: expected an 8-bit gray, RGB or RGBA picture, got OpenCV type " +
                        std::to_string(rgb.type()));
    }
    std::vector<uchar> buf;
    bool ok = false;
    try {
        ok = cv::imencode(".png", bgr, buf);
    } catch (const cv::Exception& e) {
        throw Error(std::string("PNG: encoding failed: ") + e.what());
    }
    if (!ok || buf.empty()) throw Error("PNG: encoding failed");
    return std::string(buf.begin(), buf.end());
}

void write_png(const std::string& path, const cv::Mat& rgb) {
    write_file_atomic(path, png_bytes(rgb));
}

void write_pngs(const std::vector<std::pair<std::string, cv::Mat>>& files, int threads) {
    const int n = static_cast<int>(files.size());
    if (n == 0) return;
    int workers = threads > 0 ? threads : std::max(4, 2 * at::get_num_threads());
    workers = std::max(1, std::min(workers, n));
    // Each file is one task taken from a shared counter; errors are kept per file so the one
    // rethrown is the first in list order whatever the scheduling.
    std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
    std::atomic<int> next{0};
    auto work = [&]() {
        for (int i = next++; i < n; i = next++) {
            try {
                write_png(files[i].first, files[i].second);
            } catch (...) {
                errors[static_cast<size_t>(i)] = std::current_exception();
            }
        }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < workers; ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    for (const auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace convscope
