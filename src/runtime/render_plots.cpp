// Plots: category colours, the labelled scatter plot and the thumbnail map of an embedding,
// line plots, bar strips and colour bars.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <opencv2/imgproc.hpp>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/render.hpp"
#include "runtime/detail/render_util.hpp"

namespace convscope {

using namespace render_detail;

cv::Mat segmentation_overlay(const cv::Mat& base_rgb, const at::Tensor& classes_hw, const at::Tensor& region_hw,
                             float alpha) {
    const int H = base_rgb.rows, W = base_rgb.cols;
    const at::Tensor cls = classes_hw.to(torch::kLong).contiguous();
    const int64_t h = cls.size(0), w = cls.size(1);
    const at::Tensor reg = region_hw.defined() ? region_hw.to(torch::kBool).contiguous() : at::Tensor();
    const int64_t* c = cls.data_ptr<int64_t>();
    const bool* r = reg.defined() ? reg.data_ptr<bool>() : nullptr;
    auto inside = [&](int64_t y, int64_t x) { return y >= 0 && x >= 0 && y < h && x < w && r[y * w + x]; };
    const float a = std::clamp(alpha, 0.f, 1.f);
    cv::Mat out = base_rgb.clone();
    for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
            const int64_t sy = int64_t(y) * h / H, sx = int64_t(x) * w / W;
            cv::Vec3b& px = out.at<cv::Vec3b>(y, x);
            if (r && inside(sy, sx) &&
                (!inside(sy - 1, sx) || !inside(sy + 1, sx) || !inside(sy, sx - 1) || !inside(sy, sx + 1))) {
                px = cv::Vec3b(255, 255, 255);
                continue;
            }
            const cv::Scalar col = category_colour(c[sy * w + sx]);
            for (int k = 0; k < 3; ++k)
                px[k] = cv::saturate_cast<uint8_t>((1 - a) * px[k] + a * col[k]);
        }
    return out;
}

cv::Scalar category_colour(int64_t label) {
    // Twelve hand-picked colours that stay apart from each other and from the gray of unknowns.
    static const int palette[12][3] = {{34, 102, 204},  {235, 120, 20}, {40, 160, 60},
                                       {214, 40, 48},   {140, 80, 190}, {140, 90, 55},
                                       {228, 100, 182}, {20, 180, 195}, {165, 165, 20},
                                       {20, 36, 110},   {130, 222, 96}, {30, 30, 30}};
    if (label < 0) return cv::Scalar(150, 150, 150);
    if (label < 12) return cv::Scalar(palette[label][0], palette[label][1], palette[label][2]);
    // Further labels: hues spaced by the golden angle, fixed saturation and value.
    const double hue = std::fmod(static_cast<double>(label) * 137.50776, 360.0) / 60.0;
    const double s = 0.7, val = 0.85;
    const double chroma = val * s;
    const double x = chroma * (1 - std::fabs(std::fmod(hue, 2.0) - 1));
    double r = 0, g = 0, b = 0;
    switch (static_cast<int>(hue) % 6) {
        case 0:
            r = chroma, g = x;
            break;
        case 1:
            r = x, g = chroma;
            break;
        case 2:
            g = chroma, b = x;
            break;
        case 3:
            g = x, b = chroma;
            break;
        case 4:
            r = x, b = chroma;
            break;
        default:
            r = chroma, b = x;
            break;
    }
    const double m = val - chroma;
    return cv::Scalar(std::lround((r + m) * 255), std::lround((g + m) * 255),
                      std::lround((b + m) * 255));
}

cv::Mat scatter_plot(const at::Tensor& xy, const std::vector<int64_t>& labels,
                     const std::vector<std::string>& class_names, int size_px, int point_radius) {
    const at::Tensor p = checked_xy(xy, "scatter_plot");
    check_size(size_px, "scatter_plot");
    const int64_t n = p.size(0);
    if (!labels.empty() && static_cast<int64_t>(labels.size()) != n) {
        throw Error("scatter_plot: " + std::to_string(labels.size()) + " labels for " +
                    std::to_string(n) + " points; give one label per point or none");
    }
    const int radius = std::clamp(point_radius, 0, size_px / 4);
    const PlotMapping mapping(p, size_px, radius + std::max(4, size_px / 40));

    // Legend entries: labels present, in increasing order (-1, "unknown", first).
    std::set<int64_t> present(labels.begin(), labels.end());
    std::vector<std::pair<cv::Scalar, std::string>> legend;
    for (int64_t l : present) {
        std::string name;
        if (l < 0) {
            name = "unknown";
        } else if (l < static_cast<int64_t>(class_names.size())) {
            name = class_names[static_cast<size_t>(l)];
        } else {
            name = std::to_string(l);
        }
        legend.emplace_back(category_colour(l < 0 ? -1 : l), name);
    }
    const double scale = 0.45;
    const int pad = 8, swatch = 10;
    const int row_h = std::max(swatch, label_size("Ag", scale).height) + 6;
    int legend_w = 0;
    for (const auto& e : legend) legend_w = std::max(legend_w, label_size(e.second, scale).width);
    if (!legend.empty()) legend_w += 2 * pad + swatch + 6;
    const int legend_h = legend.empty() ? 0 : 2 * pad + static_cast<int>(legend.size()) * row_h;

    cv::Mat out(std::max(size_px, legend_h), size_px + legend_w, CV_8UC3, kWhite);
    cv::rectangle(out, cv::Rect(0, 0, size_px, size_px), kFrame, 1);
    cv::Mat plot = out(cv::Rect(0, 0, size_px, size_px));
    const float* xyp = p.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
        const float x = xyp[2 * i], y = xyp[2 * i + 1];
        if (!std::isfinite(x) || !std::isfinite(y)) continue;
        const cv::Scalar colour = category_colour(labels.empty() ? 0 : labels[i]);
        const cv::Point c = mapping.map(x, y);
        if (radius == 0) {
            plot.at<cv::Vec3b>(c) = cv::Vec3b(colour[0], colour[1], colour[2]);
        } else {
            cv::circle(plot, c, radius, colour, cv::FILLED, cv::LINE_AA);
        }
    }
    const int ascent = cv::getTextSize("Ag", kFont, scale, font_thickness(scale), nullptr).height;
    for (size_t k = 0; k < legend.size(); ++k) {
        const int top = pad + static_cast<int>(k) * row_h;
        const int x = size_px + pad;
        cv::rectangle(out, cv::Rect(x, top + (row_h - swatch) / 2, swatch, swatch), legend[k].first,
                      cv::FILLED);
        put_label(out, legend[k].second, cv::Point(x + swatch + 6, top + (row_h + ascent) / 2),
                  scale, kDarkText, false);
    }
    return out;
}

cv::Mat thumbnail_map(const at::Tensor& xy, const std::vector<cv::Mat>& thumbs, int size_px,
                      int thumb_px, const std::vector<int64_t>& labels, bool skip_overlapping) {
    const at::Tensor p = checked_xy(xy, "thumbnail_map");
    check_size(size_px, "thumbnail_map");
    const int64_t n = p.size(0);
    if (static_cast<int64_t>(thumbs.size()) != n) {
        throw Error("thumbnail_map: " + std::to_string(thumbs.size()) + " thumbnails for " +
                    std::to_string(n) + " points; give one per point");
    }
    if (!labels.empty() && static_cast<int64_t>(labels.size()) != n) {
        throw Error("thumbnail_map: " + std::to_string(labels.size()) + " labels for " +
                    std::to_string(n) + " points; give one label per point or none");
    }
    if (thumb_px < 1 || thumb_px > size_px / 2) {
        throw Error("thumbnail_map: thumb_px must be between 1 and size_px / 2");
    }
    const PlotMapping mapping(p, size_px, thumb_px / 2 + 1);
    cv::Mat out(size_px, size_px, CV_8UC3, kWhite);
    const int cells = (size_px + thumb_px - 1) / thumb_px;
    std::vector<bool> taken(skip_overlapping ? static_cast<size_t>(cells) * cells : 0, false);
    const float* xyp = p.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
        const float x = xyp[2 * i], y = xyp[2 * i + 1];
        if (!std::isfinite(x) || !std::isfinite(y)) continue;
        cv::Point c = mapping.map(x, y);
        if (skip_overlapping) {
            const int cx = std::clamp(c.x / thumb_px, 0, cells - 1);
            const int cy = std::clamp(c.y / thumb_px, 0, cells - 1);
            const size_t cell = static_cast<size_t>(cy) * cells + static_cast<size_t>(cx);
            if (taken[cell]) continue;
            taken[cell] = true;
            // Centre in the cell, so kept thumbnails never overlap.
            c = cv::Point(cx * thumb_px + thumb_px / 2, cy * thumb_px + thumb_px / 2);
        }
        const cv::Mat t = resize_to_fit(as_rgb(thumbs[i], "thumbnail_map"), thumb_px);
        const int x0 = c.x - t.cols / 2, y0 = c.y - t.rows / 2;
        paste(out, t, x0, y0);
        if (!labels.empty()) {
            cv::rectangle(out, cv::Rect(x0, y0, t.cols, t.rows), category_colour(labels[i]), 1);
        }
    }
    return out;
}

cv::Mat line_plot(const at::Tensor& ys, int width, int height,
                  const std::vector<std::string>& series_names, std::optional<Range> y_range) {
    at::Tensor v = cpu_float(ys, "line_plot");
    if (v.dim() == 1) v = v.unsqueeze(0);
    if (v.dim() != 2 || v.size(1) == 0) {
        throw Error("line_plot: expected ys of shape [N] or [S,N] with N >= 1, got " +
                    shape_of(ys));
    }
    if (width < 32 || height < 32) throw Error("line_plot: the canvas must be at least 32x32 px");
    const int64_t s_count = v.size(0), n = v.size(1);
    if (!series_names.empty() && static_cast<int64_t>(series_names.size()) != s_count) {
        throw Error("line_plot: " + std::to_string(series_names.size()) + " names for " +
                    std::to_string(s_count) + " series");
    }
    Range r = y_range ? *y_range : value_range(v);
    if (!(r.hi > r.lo)) r = Range{r.lo - 0.5f, r.lo + 0.5f};

    const double scale = 0.4;
    const auto [lo_text, hi_text] = format_range_ends(r.lo, r.hi);
    const int text_w = std::max(label_size(hi_text, scale).width, label_size(lo_text, scale).width);
    const int ascent = cv::getTextSize("Ag", kFont, scale, font_thickness(scale), nullptr).height;
    const int left = text_w + 8, right = 6, top = 6, bottom = 6;
    const cv::Rect frame(left, top, std::max(2, width - left - right),
                         std::max(2, height - top - bottom));
    cv::Mat out(height, width, CV_8UC3, kWhite);
    cv::rectangle(out, frame, kFrame, 1);
    put_label(out, hi_text, cv::Point(4, top + ascent), scale, kDarkText, false);
    put_label(out, lo_text, cv::Point(4, frame.y + frame.height - 1), scale, kDarkText, false);

    auto to_px = [&](int64_t j, float y) {
        const double fx = n == 1 ? 0.5 : static_cast<double>(j) / static_cast<double>(n - 1);
        const double fy = (static_cast<double>(r.hi) - y) / (static_cast<double>(r.hi) - r.lo);
        return cv::Point(
            frame.x + 1 + static_cast<int>(std::lround(fx * (frame.width - 3))),
            frame.y + 1 +
                static_cast<int>(std::lround(std::clamp(fy, 0.0, 1.0) * (frame.height - 3))));
    };
    for (int64_t s = 0; s < s_count; ++s) {
        const cv::Scalar colour = category_colour(s);
        const float* y = v[s].data_ptr<float>();
        for (int64_t j = 0; j < n; ++j) {
            if (!std::isfinite(y[j])) continue;
            const bool next_ok = j + 1 < n && std::isfinite(y[j + 1]);
            if (next_ok) {
                cv::line(out, to_px(j, y[j]), to_px(j + 1, y[j + 1]), colour, 2, cv::LINE_AA);
            } else if (j == 0 || !std::isfinite(y[j - 1])) {
                cv::circle(out, to_px(j, y[j]), 2, colour, cv::FILLED);  // an isolated point
            }
        }
    }
    // Legend in the top-right corner on a white box, so lines under it do not hide the text.
    int legend_text_w = 0;
    for (const auto& name : series_names) {
        legend_text_w = std::max(legend_text_w, label_size(name, scale).width);
    }
    if (!series_names.empty()) {
        const int box_w = legend_text_w + 26;
        const int box_h = static_cast<int>(series_names.size()) * (ascent + 8) + 6;
        const cv::Rect box(frame.x + frame.width - box_w - 3, frame.y + 3, box_w, box_h);
        cv::rectangle(out, box & frame, kWhite, cv::FILLED);
        cv::rectangle(out, box & frame, kFrame, 1);
    }
    for (size_t s = 0; s < series_names.size(); ++s) {
        const int x = frame.x + frame.width - legend_text_w - 26;
        const int baseline = frame.y + 6 + ascent + static_cast<int>(s) * (ascent + 8);
        const cv::Scalar colour = category_colour(static_cast<int64_t>(s));
        cv::line(out, cv::Point(x, baseline - ascent / 2), cv::Point(x + 12, baseline - ascent / 2),
                 colour, 2);
        put_label(out, series_names[s], cv::Point(x + 16, baseline), scale, kDarkText, false);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Bar strips and colour bars

cv::Mat bar_strip(const at::Tensor& values_f, int height, Colormap cmap, int bar_width, int gap) {
    const at::Tensor v = cpu_float(values_f, "bar_strip").flatten();
    const int n = static_cast<int>(v.numel());
    if (n == 0) throw Error("bar_strip: there are no values to draw");
    if (height < 1 || bar_width < 1 || gap < 0) {
        throw Error("bar_strip: height and bar_width must be >= 1 and gap >= 0");
    }
    const Range vr = value_range(v);
    const Range colour_r = auto_range(cmap, v);
    const double span_lo = std::min(0.f, vr.lo), span_hi = std::max(0.f, vr.hi);
    const int width = n * bar_width + (n - 1) * gap;
    cv::Mat out(height, width, CV_8UC3, kWhite);
    if (!(span_hi > span_lo)) return out;  // all zero: nothing to draw
    // Pixel boundary (0 = top edge, height = bottom edge) of a value.
    auto edge = [&](double value) {
        return static_cast<int>(std::lround((span_hi - value) / (span_hi - span_lo) * height));
    };
    const int zero_y = edge(0.0);
    if (span_lo < 0 && span_hi > 0) {
        cv::line(out, cv::Point(0, std::min(zero_y, height - 1)),
                 cv::Point(width - 1, std::min(zero_y, height - 1)), cv::Scalar(160, 160, 160));
    }
    const float* p = v.data_ptr<float>();
    for (int i = 0; i < n; ++i) {
        if (!std::isfinite(p[i])) {  // a full-height bar of its own colour
            const cv::Vec3b c = kNonFiniteColour;
            out(cv::Rect(i * (bar_width + gap), 0, bar_width, height)).setTo(cv::Scalar(c[0], c[1], c[2]));
            continue;
        }
        const int e = edge(p[i]);
        const int top = std::min(e, zero_y), bottom = std::max(e, zero_y);
        if (bottom <= top) continue;
        const cv::Vec3b c = colour_of(p[i], cmap, colour_r);
        out(cv::Rect(i * (bar_width + gap), top, bar_width, bottom - top))
            .setTo(cv::Scalar(c[0], c[1], c[2]));
    }
    return out;
}

cv::Mat heat_with_colorbar(const cv::Mat& img, Colormap cmap, Range r, int bar_width) {
    const cv::Mat base = as_rgb(img, "heat_with_colorbar");
    if (bar_width < 1) throw Error("heat_with_colorbar: bar_width must be >= 1");
    const Range e = effective_range(cmap, r);
    const double scale = 0.4;
    const std::string hi_text = format_value(e.hi), lo_text = format_value(e.lo);
    int descent = 0;
    const cv::Size ts = cv::getTextSize("Ag", kFont, scale, font_thickness(scale), &descent);
    const int text_w = std::max(label_size(hi_text, scale).width, label_size(lo_text, scale).width);
    const int gap = 4;
    const bool show_zero = cmap == Colormap::Diverging && e.hi > 0;
    const int lines = show_zero ? 3 : 2;  // labels that must fit beside the bar without overlap
    const int height = std::max(base.rows, lines * (ts.height + descent + 3));
    const int bar_x = base.cols + gap;
    const int text_x = bar_x + bar_width + gap;
    cv::Mat out(height, text_x + text_w + gap, CV_8UC3, kWhite);
    base.copyTo(out(cv::Rect(0, 0, base.cols, base.rows)));
    const auto& table = colormap_table(cmap);
    for (int y = 0; y < height; ++y) {
        const int idx =
            height == 1 ? 255 : 255 - static_cast<int>(std::lround(y * 255.0 / (height - 1)));
        const cv::Vec3b c = table[idx];
        out(cv::Rect(bar_x, y, bar_width, 1)).setTo(cv::Scalar(c[0], c[1], c[2]));
    }
    put_label(out, hi_text, cv::Point(text_x, ts.height + 1), scale, kDarkText, false);
    put_label(out, lo_text, cv::Point(text_x, height - descent - 1), scale, kDarkText, false);
    if (show_zero) {
        put_label(out, "0", cv::Point(text_x, (height + ts.height) / 2), scale, kDarkText, false);
    }
    return out;
}

}  // namespace convscope
