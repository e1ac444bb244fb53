#include "convscope/methods/target.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/blur.hpp"

namespace convscope {

namespace {
std::string classes_hint(int64_t k) {
    return "the model has " + std::to_string(k) + " classes (0.." + std::to_string(k - 1) + ")";
}
}  // namespace

Target parse_target(const std::string& spec) {
    Target t;
    if (spec == "pred" || spec == "predicted") return t;
    if (spec == "label") {
        t.kind = Target::Kind::Label;
        return t;
    }
    int64_t c = 0;
    if (detail::parse_int64(spec, c) && c >= 0) {
        t.kind = Target::Kind::Class;
        t.class_index = c;
        return t;
    }
    throw UsageError("bad target '" + spec +
                     "': use 'pred' (the predicted class), 'label' (the item's label) or a class number >= 0");
}

std::string target_name(const Target& t) {
    switch (t.kind) {
    case Target::Kind::Predicted: return "pred";
    case Target::Kind::Label: return "label";
    case Target::Kind::Class: return std::to_string(t.class_index);
    }
    return "";
}

void check_target(const Target& t, int64_t n) {
    if (t.kind == Target::Kind::Class && t.class_index < 0)
        throw Error("target class " + std::to_string(t.class_index) +
                    " is out of range: use a class number >= 0, pred or label");
    if (t.kind != Target::Kind::Label) return;
    if (t.labels.empty())
        throw Error("target 'label' needs labelled data: it needs one label per image, but the data has no "
                    "labels: use --target pred or a class number, or give labels (--labels L.npy for .npy data)");
    if (static_cast<int64_t>(t.labels.size()) != n)
        throw Error("target 'label' needs one label per image, but got " + std::to_string(t.labels.size()) +
                    " labels for " + std::to_string(n) + " images");
    for (size_t i = 0; i < t.labels.size(); ++i)
        if (t.labels[i] < 0)
            throw Error("target 'label' needs a label for every image, but image " + std::to_string(i) +
                        " has none (it has no label in the data): use --target pred or a class number");
}

std::vector<int64_t> resolve_targets(const Target& t, const at::Tensor& outputs, int64_t first) {
    CONVSCOPE_CHECK(outputs.dim() == 2, "targets are resolved from [B,K] outputs");
    const int64_t b = outputs.size(0), k = outputs.size(1);
    std::vector<int64_t> out(static_cast<size_t>(b));
    switch (t.kind) {
    case Target::Kind::Predicted: {
        const at::Tensor arg = outputs.argmax(1).to(torch::kLong).contiguous();
        std::copy(arg.data_ptr<int64_t>(), arg.data_ptr<int64_t>() + b, out.begin());
        break;
    }
    case Target::Kind::Class:
        if (t.class_index < 0 || t.class_index >= k)
            throw Error("target class " + std::to_string(t.class_index) + " is out of range: " + classes_hint(k));
        std::fill(out.begin(), out.end(), t.class_index);
        break;
    case Target::Kind::Label:
        CONVSCOPE_CHECK(first >= 0 && first + b <= static_cast<int64_t>(t.labels.size()),
                        "one label per image (check_target first)");
        for (int64_t i = 0; i < b; ++i) {
            const int64_t l = t.labels[static_cast<size_t>(first + i)];
            if (l >= k)
                throw Error("label " + std::to_string(l) + " of image " + std::to_string(first + i) +
                            " is out of range: " + classes_hint(k));
            out[static_cast<size_t>(i)] = l;
        }
        break;
    }
    return out;
}

Baseline parse_baseline(const std::string& spec) {
    Baseline b;
    double v = 0;
    if (spec == "zero" || spec == "zeros") return b;
    if (spec == "mean") {
        b.kind = Baseline::Kind::Mean;
        return b;
    }
    if (spec == "blur") {
        b.kind = Baseline::Kind::Blur;
        return b;
    }
    if (spec.rfind("blur:", 0) == 0) {
        if (!detail::parse_double(spec.substr(5), v) || v <= 0)
            throw UsageError("bad baseline '" + spec + "': the blur sigma must be a number > 0 (pixels), as in blur:5");
        b.kind = Baseline::Kind::Blur;
        b.value = v;
        return b;
    }
    if (detail::parse_double(spec, v)) {
        if (v != 0) {
            b.kind = Baseline::Kind::Constant;
            b.value = v;
        }
        return b;
    }
    throw UsageError("bad baseline '" + spec +
                     "': the baseline takes 0, mean, blur or a number (also zero, and blur:SIGMA with sigma in pixels)");
}

std::string baseline_name(const Baseline& b) {
    switch (b.kind) {
    case Baseline::Kind::Zero: return "zero";
    case Baseline::Kind::Mean: return "mean";
    case Baseline::Kind::Blur: return b.value > 0 ? "blur:" + detail::format_number(b.value) : "blur";
    case Baseline::Kind::Constant: return detail::format_number(b.value);
    }
    return "";
}

void check_baseline(const Baseline& b) {
    if (b.kind == Baseline::Kind::Constant && !std::isfinite(b.value))
        throw Error("the baseline must be a finite number");
    if (b.kind == Baseline::Kind::Blur && (b.value < 0 || !std::isfinite(b.value)))
        throw Error("the blur sigma must be a finite number >= 0 (0 = automatic)");
}

at::Tensor baseline_images(const at::Tensor& images, const Baseline& b, double auto_sigma_divisor) {
    torch::NoGradGuard no_grad;
    const at::Tensor x = images.to(torch::kFloat).contiguous();
    switch (b.kind) {
    case Baseline::Kind::Zero: return torch::zeros_like(x);
    case Baseline::Kind::Constant: return torch::full_like(x, b.value);
    case Baseline::Kind::Mean: return x.mean({2, 3}, true).expand_as(x).contiguous();
    case Baseline::Kind::Blur: {
        const double sigma =
            b.value > 0 ? b.value : static_cast<double>(std::max(x.size(2), x.size(3))) / auto_sigma_divisor;
        // Edge pixels repeat outwards: reflection would need the image to be larger than the kernel.
        return detail::gaussian_blur(x, sigma, detail::BlurBorder::Replicate);
    }
    }
    return torch::zeros_like(x);
}

}  // namespace convscope
