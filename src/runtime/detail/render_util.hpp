#pragma once
// What the picture makers of render.cpp and render_plots.cpp share: the font and colours of
// labels, argument checks and small drawing helpers. Private to the runtime.
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <opencv2/imgproc.hpp>
#include <string>
#include <utility>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/render.hpp"

namespace convscope::render_detail {

inline constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;
inline const cv::Scalar kWhite(255, 255, 255);
inline const cv::Scalar kOutline(16, 16, 16);
inline const cv::Scalar kDarkText(20, 20, 20);
inline const cv::Scalar kFrame(190, 190, 190);

// Any tensor -> contiguous CPU float32 (detached). `what` names the argument in errors.
inline at::Tensor cpu_float(const at::Tensor& t, const char* what) {
    if (!t.defined()) {
        throw Error(std::string(what) + ": the tensor is undefined (no data)");
    }
    return t.detach().to(at::kCPU).to(at::kFloat).contiguous();
}

inline std::string shape_of(const at::Tensor& t) {
    std::string s = "[";
    for (int64_t i = 0; i < t.dim(); ++i) {
        if (i) s += ",";
        s += std::to_string(t.size(i));
    }
    return s + "]";
}

// A picture as CV_8UC3: CV_8UC3 is shared (not copied), CV_8UC1 is expanded to three channels.
inline cv::Mat as_rgb(const cv::Mat& img, const char* what) {
    if (img.empty()) {
        throw Error(std::string(what) + ": the picture is empty");
    }
    if (img.type() == CV_8UC3) return img;
    if (img.type() == CV_8UC1) {
        cv::Mat out;
        cv::cvtColor(img, out, cv::COLOR_GRAY2RGB);
        return out;
    }
    throw Error(std::string(what) +
                ": expected an 8-bit gray or RGB picture (CV_8UC1/CV_8UC3), got "
                "type " +
                std::to_string(img.type()));
}

inline int font_thickness(double scale) { return scale < 0.7 ? 1 : 2; }

inline cv::Vec3b lerp(const cv::Vec3b& a, const cv::Vec3b& b, double t) {
    cv::Vec3b out;
    for (int c = 0; c < 3; ++c) {
        out[c] = static_cast<uchar>(std::lround(a[c] + (b[c] - a[c]) * t));
    }
    return out;
}

inline std::array<cv::Vec3b, 256> build_table(Colormap cmap) {
    std::array<cv::Vec3b, 256> table{};
    switch (cmap) {
        case Colormap::Gray:
            for (int i = 0; i < 256; ++i) table[i] = cv::Vec3b(i, i, i);
            return table;
        case Colormap::Diverging: {
            // Blue -> white over indices 0..127, white -> red over 128..255: both middle entries
            // are white, so a value of exactly 0 (t = 0.5, index 127.5 rounded) is white.
            const cv::Vec3b blue(40, 80, 180), white(255, 255, 255), red(180, 30, 40);
            for (int i = 0; i < 128; ++i) table[i] = lerp(blue, white, i / 127.0);
            for (int i = 128; i < 256; ++i) table[i] = lerp(white, red, (i - 128) / 127.0);
            return table;
        }
        default:
            break;
    }
    // The perceptual maps come from OpenCV's built-in tables (matplotlib's viridis, inferno,
    // magma and Google's turbo), read back through a 0..255 ramp.
    int cv_map = cv::COLORMAP_VIRIDIS;
    if (cmap == Colormap::Inferno) cv_map = cv::COLORMAP_INFERNO;
    if (cmap == Colormap::Magma) cv_map = cv::COLORMAP_MAGMA;
    if (cmap == Colormap::Turbo) cv_map = cv::COLORMAP_TURBO;
    cv::Mat ramp(1, 256, CV_8UC1);
    for (int i = 0; i < 256; ++i) ramp.at<uchar>(0, i) = static_cast<uchar>(i);
    cv::Mat bgr;
    cv::applyColorMap(ramp, bgr, cv_map);
    for (int i = 0; i < 256; ++i) {
        const cv::Vec3b v = bgr.at<cv::Vec3b>(0, i);
        table[i] = cv::Vec3b(v[2], v[1], v[0]);
    }
    return table;
}

// Colour a [H,W] float32 cv::Mat (already resized as needed).
inline cv::Mat colourise(const cv::Mat& values, Colormap cmap, Range r) {
    const auto& table = colormap_table(cmap);
    const Range e = effective_range(cmap, r);
    cv::Mat out(values.rows, values.cols, CV_8UC3);
    for (int y = 0; y < values.rows; ++y) {
        const float* src = values.ptr<float>(y);
        cv::Vec3b* dst = out.ptr<cv::Vec3b>(y);
        for (int x = 0; x < values.cols; ++x)
            dst[x] = std::isfinite(src[x]) ? table[colour_index(src[x], e)] : kNonFiniteColour;
    }
    return out;
}

// A [H,W] float32 tensor as a cv::Mat view (valid while t lives).
inline cv::Mat mat_view(const at::Tensor& hw_float) {
    return cv::Mat(static_cast<int>(hw_float.size(0)), static_cast<int>(hw_float.size(1)), CV_32F,
                   hw_float.data_ptr<float>());
}

inline at::Tensor finite_values(const at::Tensor& t) {
    at::Tensor f = cpu_float(t, "value range").flatten();
    return f.masked_select(at::isfinite(f));
}

inline double percentile_of_sorted(const at::Tensor& sorted, double pct) {
    const int64_t n = sorted.numel();
    const float* v = sorted.data_ptr<float>();
    const double pos = std::clamp(pct, 0.0, 100.0) / 100.0 * static_cast<double>(n - 1);
    const int64_t i0 = static_cast<int64_t>(std::floor(pos));
    const int64_t i1 = std::min(i0 + 1, n - 1);
    const double frac = pos - static_cast<double>(i0);
    return v[i0] + (static_cast<double>(v[i1]) - v[i0]) * frac;
}

inline std::string format_value(float v, int digits = 3) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*g", digits, static_cast<double>(v));
    return buf;
}

// The two ends of an axis with as many significant digits (3 to 7) as it takes to tell them
// apart: a nearly flat curve's range reads "0.1115 ... 0.1124", not "0.112 ... 0.112".
inline std::pair<std::string, std::string> format_range_ends(float lo, float hi) {
    int digits = 3;
    while (digits < 7 && lo != hi && format_value(lo, digits) == format_value(hi, digits)) ++digits;
    return {format_value(lo, digits), format_value(hi, digits)};
}

// Maps data coordinates into a size x size canvas with a margin, keeping the aspect ratio and
// putting larger y higher up.
struct PlotMapping {
    double xmin = 0, ymin = 0, scale = 0, offx = 0, offy = 0;
    int size = 0, margin = 0;

    PlotMapping(const at::Tensor& xy, int size_px, int margin_px)
        : size(size_px), margin(margin_px) {
        const float* p = xy.data_ptr<float>();
        double xmax = 0, ymax = 0;
        bool any = false;
        for (int64_t i = 0; i < xy.size(0); ++i) {
            const double x = p[2 * i], y = p[2 * i + 1];
            if (!std::isfinite(x) || !std::isfinite(y)) continue;
            if (!any) {
                xmin = xmax = x;
                ymin = ymax = y;
                any = true;
            }
            xmin = std::min(xmin, x), xmax = std::max(xmax, x);
            ymin = std::min(ymin, y), ymax = std::max(ymax, y);
        }
        const double avail = std::max(0, size - 1 - 2 * margin);
        const double extent = std::max(xmax - xmin, ymax - ymin);
        scale = extent > 0 ? avail / extent : 0.0;
        offx = (avail - (xmax - xmin) * scale) / 2;
        offy = (avail - (ymax - ymin) * scale) / 2;
    }

    cv::Point map(double x, double y) const {
        const double px = margin + offx + (x - xmin) * scale;
        const double py = (size - 1) - (margin + offy + (y - ymin) * scale);
        return cv::Point(static_cast<int>(std::lround(px)), static_cast<int>(std::lround(py)));
    }
};

inline at::Tensor checked_xy(const at::Tensor& xy, const char* what) {
    at::Tensor p = cpu_float(xy, what);
    if (p.dim() != 2 || p.size(1) != 2) {
        throw Error(std::string(what) + ": expected xy of shape [N,2], got " + shape_of(p));
    }
    return p;
}

inline void check_size(int size_px, const char* what) {
    if (size_px < 16 || size_px > 16384) {
        throw Error(std::string(what) + ": size " + std::to_string(size_px) +
                    " px is out of range; use 16..16384");
    }
}

// Copies src into dst at (x, y), clipping to dst.
inline void paste(cv::Mat& dst, const cv::Mat& src, int x, int y) {
    const cv::Rect target = cv::Rect(x, y, src.cols, src.rows) & cv::Rect(0, 0, dst.cols, dst.rows);
    if (target.empty()) return;
    src(cv::Rect(target.x - x, target.y - y, target.width, target.height)).copyTo(dst(target));
}


}  // namespace convscope::render_detail
