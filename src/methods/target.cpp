#include "convscope/methods/target.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/blur.hpp"

namespace convscope {

namespace {
std::string classes_hint(int64_t k) {
    return "the model has " + std::to_string(k) + " classes (0.." + std::to_string(k - 1) + ")";
}
}  // namespace

namespace {
constexpr EnumTable<Score, 3> kScoreNames = {{
    {Score::Logit, "logit"},
    {Score::Prob, "prob"},
    {Score::Sigmoid, "sigmoid"},
}};
}  // namespace

const char* score_name(Score score) { return enum_name(kScoreNames, score); }
Score parse_score(const std::string& name) { return parse_enum(kScoreNames, name, "score"); }

Region parse_region(const std::string& spec) {
    Region r;
    if (spec == "pred") return r;
    if (spec == "all") {
        r.kind = Region::Kind::All;
        return r;
    }
    if (spec.rfind("box:", 0) == 0) {
        const auto parts = detail::split(spec.substr(4), ',');
        int64_t v[4];
        bool ok = parts.size() == 4;
        for (size_t i = 0; ok && i < 4; ++i) ok = detail::parse_int64(parts[i], v[i]) && v[i] >= 0;
        if (!ok || v[2] <= v[0] || v[3] <= v[1])
            throw UsageError("bad region '" + spec + "': a box is box:x0,y0,x1,y1 in output pixels with 0 <= x0 < x1 "
                             "and 0 <= y0 < y1 (x1, y1 excluded), as in box:10,20,50,60");
        r.kind = Region::Kind::Box;
        r.x0 = v[0], r.y0 = v[1], r.x1 = v[2], r.y1 = v[3];
        return r;
    }
    if (spec.rfind("mask:", 0) == 0 && spec.size() > 5) {
        r.kind = Region::Kind::Mask;
        r.mask_path = spec.substr(5);
        r.mask = (read_image(r.mask_path).amax(0) > 0.5f).contiguous();
        if (!r.mask.any().item<bool>())
            throw Error("the region mask " + r.mask_path + " is empty (no pixel above one half): paint the region "
                        "to explain white on black");
        return r;
    }
    throw UsageError("bad region '" + spec + "': use pred (the pixels predicted as the target class), all, "
                     "box:x0,y0,x1,y1 or mask:FILE.png");
}

std::string region_name(const Region& r) {
    switch (r.kind) {
    case Region::Kind::Pred: return "pred";
    case Region::Kind::All: return "all";
    case Region::Kind::Box:
        return "box:" + std::to_string(r.x0) + "," + std::to_string(r.y0) + "," + std::to_string(r.x1) + "," +
               std::to_string(r.y1);
    case Region::Kind::Mask: return "mask:" + r.mask_path;
    }
    return "";
}

Target parse_target(const std::string& spec) {
    Target t;
    if (spec == "pred" || spec == "predicted") return t;
    if (spec == "label") {
        t.kind = Target::Kind::Label;
        return t;
    }
    if (spec.rfind("similarity:", 0) == 0 && spec.size() > 11) {
        t.kind = Target::Kind::Similarity;
        t.reference = spec.substr(11);
        return t;
    }
    int64_t c = 0;
    if (detail::parse_int64(spec, c) && c >= 0) {
        t.kind = Target::Kind::Class;
        t.class_index = c;
        return t;
    }
    throw UsageError("bad target '" + spec +
                     "': use 'pred' (the predicted class), 'label' (the item's label), a class number >= 0 or "
                     "similarity:INDEX|IMAGE (the similarity with a reference)");
}

std::string target_name(const Target& t) {
    switch (t.kind) {
    case Target::Kind::Predicted: return "pred";
    case Target::Kind::Label: return "label";
    case Target::Kind::Class: return std::to_string(t.class_index);
    case Target::Kind::Similarity: return "similarity:" + t.reference;
    case Target::Kind::PerImage: return "per-image";
    }
    return "";
}

void check_target(const Target& t, int64_t n) {
    if (t.kind == Target::Kind::Class && t.class_index < 0)
        throw Error("target class " + std::to_string(t.class_index) +
                    " is out of range: use a class number >= 0, pred or label");
    if (t.kind == Target::Kind::Similarity &&
        (!t.reference_input.defined() || t.reference_input.dim() != 4 || t.reference_input.size(0) != 1))
        throw Error("target 'similarity:" + t.reference + "' has no reference image: give an item index or an image file");
    if (t.kind == Target::Kind::PerImage) {
        CONVSCOPE_CHECK(static_cast<int64_t>(t.labels.size()) == n, "one class per image for a per-image target");
        for (int64_t c : t.labels)
            if (c < 0) throw Error("per-image target class " + std::to_string(c) + " is out of range: use classes >= 0");
        return;
    }
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

namespace {

std::string output_shape_str(const at::Tensor& out) {
    std::vector<int64_t> s = out.sizes().vec();
    return "[N" + (s.size() > 1 ? "," + detail::dims_str(std::vector<int64_t>(s.begin() + 1, s.end())) : "") + "]";
}

// The classes of images [first, first + B) from their outputs [B,K]. Throws Error for a class
// or label outside [0, K).
std::vector<int64_t> classifier_classes(const Target& t, const at::Tensor& outputs, int64_t first) {
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
    case Target::Kind::PerImage:
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
    case Target::Kind::Similarity: break;
    }
    return out;
}

// The region's pixels [H,W] (bool) before the class is known (pred and all: every pixel).
at::Tensor region_pixels(const Region& r, int64_t h, int64_t w) {
    switch (r.kind) {
    case Region::Kind::Pred:
    case Region::Kind::All: return torch::ones({h, w}, torch::kBool);
    case Region::Kind::Box: {
        if (r.x1 > w || r.y1 > h)
            throw Error("the region " + region_name(r) + " is outside the output, which is " + std::to_string(w) +
                        " wide and " + std::to_string(h) + " high: use a box inside [0," + std::to_string(w) + ") x [0," +
                        std::to_string(h) + ")");
        at::Tensor m = torch::zeros({h, w}, torch::kBool);
        m.slice(0, r.y0, r.y1).slice(1, r.x0, r.x1).fill_(true);
        return m;
    }
    case Region::Kind::Mask:
        if (r.mask.size(0) != h || r.mask.size(1) != w)
            throw Error("the region mask " + r.mask_path + " is " + std::to_string(r.mask.size(1)) + "x" +
                        std::to_string(r.mask.size(0)) + " but the output is " + std::to_string(w) + "x" +
                        std::to_string(h) + " (width x height): draw the mask at the output's size");
        return r.mask;
    }
    return at::Tensor();
}

}  // namespace

TargetScorer::TargetScorer(const Model& model, const Target& t, const at::Tensor& clean, int64_t first)
    : target_(&t) {
    torch::NoGradGuard no_grad;
    const at::Tensor out = clean.detach().to(torch::kFloat);
    const int64_t b = out.size(0);
    if (t.kind == Target::Kind::Similarity) {
        check_target(t, b);
        reference_ = unit_reference(model, t.reference_input);
        if (reference_.numel() != out[0].numel())
            throw Error("the reference's output has " + std::to_string(reference_.numel()) +
                        " values but the images' have " + std::to_string(out[0].numel()));
        classes_.assign(static_cast<size_t>(b), -1);
        return;
    }
    if (out.dim() == 2) {
        if (t.region.kind != Region::Kind::Pred)
            throw Error("--region " + region_name(t.region) + " needs a dense output [N,K,H,W] (segmentation), but "
                        "the model's output is " + output_shape_str(out) + ": leave --region out");
        classes_ = classifier_classes(t, out, first);
        return;
    }
    if (out.dim() != 4)
        throw Error("a class target needs an output [N,K] (classes) or [N,K,H,W] (classes per pixel), but the model's "
                    "output is " + output_shape_str(out) + ": choose another output (--output) or use a similarity target");
    if (t.kind == Target::Kind::Label)
        throw Error("target 'label' takes one class per image, which a dense output [N,K,H,W] has not: use a class "
                    "number or pred, with --region");
    const int64_t k = out.size(1), h = out.size(2), w = out.size(3);
    // A mask [N,H,W] holds one region per image (fixed_target's regions of the clean images).
    const bool per_image = t.region.kind == Region::Kind::Mask && t.region.mask.dim() == 3;
    if (per_image && (t.region.mask.size(0) < first + b || t.region.mask.size(1) != h || t.region.mask.size(2) != w))
        throw Error("the per-image region masks are " + output_shape_str(t.region.mask) + " but the output is " +
                    output_shape_str(out) + ": one mask of the output's size per image");
    const at::Tensor base = per_image ? at::Tensor() : region_pixels(t.region, h, w);
    const at::Tensor predicted = out.argmax(1);  // [B,H,W]
    weights_ = torch::zeros({b, h, w});
    classes_.resize(static_cast<size_t>(b));
    for (int64_t i = 0; i < b; ++i) {
        int64_t c = t.class_index;
        if (t.kind == Target::Kind::PerImage) {
            CONVSCOPE_CHECK(first + i < static_cast<int64_t>(t.labels.size()), "one class per image (check_target first)");
            c = t.labels[static_cast<size_t>(first + i)];
        }
        const at::Tensor base_i = per_image ? t.region.mask[first + i] : base;
        if (t.kind == Target::Kind::Predicted) {
            const at::Tensor counts = torch::bincount(predicted[i].masked_select(base_i), {}, k);
            c = counts.argmax().item<int64_t>();
        } else if (c < 0 || c >= k) {
            throw Error("target class " + std::to_string(c) + " is out of range: " + classes_hint(k));
        }
        at::Tensor pixels = base_i;
        if (t.region.kind == Region::Kind::Pred) pixels = predicted[i] == c;
        const int64_t count = pixels.sum().item<int64_t>();
        if (count == 0)
            throw Error("class " + std::to_string(c) + " is not predicted anywhere in image " + std::to_string(first + i) +
                        ": choose a class it predicts, or give the region (--region box:x0,y0,x1,y1, mask:FILE or all)");
        weights_[i].masked_fill_(pixels, 1.0 / static_cast<double>(count));
        classes_[static_cast<size_t>(i)] = c;
    }
}

namespace {
// Cosine similarity [R] of each row of outputs [R,...] with a unit-length reference [F].
at::Tensor cosine_rows(const at::Tensor& outputs, const at::Tensor& reference) {
    const at::Tensor flat = outputs.reshape({outputs.size(0), -1});
    const at::Tensor ref = reference.to(flat.scalar_type());
    return (flat * ref.unsqueeze(0)).sum(1) / flat.norm(2, 1).clamp_min(1e-12);
}
}  // namespace

at::Tensor unit_reference(const Model& model, const at::Tensor& reference_input) {
    torch::NoGradGuard no_grad;
    if (!reference_input.defined()) throw Error("a similarity target needs its reference (similarity:INDEX|IMAGE)");
    const at::Tensor ref = model.forward(reference_input).detach().to(torch::kFloat).reshape({-1});
    const double norm = ref.norm().item<double>();
    if (!(norm > 0)) throw Error("the reference's output is zero: a similarity with it is undefined");
    return ref / norm;
}

at::Tensor every_class_score(const at::Tensor& outputs, const Target& t, const at::Tensor& reference) {
    if (t.kind == Target::Kind::Similarity) {
        CONVSCOPE_CHECK(reference.defined(), "a unit reference (unit_reference) for similarity");
        if (reference.numel() != outputs[0].numel())
            throw Error("the reference's output has " + std::to_string(reference.numel()) +
                        " values but the images' have " + std::to_string(outputs[0].numel()));
        return cosine_rows(outputs, reference).unsqueeze(1);
    }
    if (outputs.dim() != 2 && outputs.dim() != 4)
        throw Error("a class score needs an output [N,K] (classes) or [N,K,H,W] (classes per pixel), but the "
                    "model's output is " + output_shape_str(outputs) + ": choose another output (--output)");
    if (outputs.dim() == 2 && t.region.kind != Region::Kind::Pred)
        throw Error("--region " + region_name(t.region) + " needs a dense output [N,K,H,W] (segmentation), but "
                    "the model's output is " + output_shape_str(outputs) + ": leave --region out");
    at::Tensor s = t.score == Score::Prob ? torch::softmax(outputs, 1)
                   : t.score == Score::Sigmoid ? torch::sigmoid(outputs)
                                               : outputs;
    if (outputs.dim() == 2) return s;
    const at::Tensor pixels = region_pixels(t.region, outputs.size(2), outputs.size(3));
    const at::Tensor w = pixels.to(s.scalar_type()) / pixels.sum().to(s.scalar_type());
    return (s * w).sum({2, 3});
}

at::Tensor TargetScorer::scores(const at::Tensor& outputs, const std::vector<int64_t>& rows) const {
    const int64_t r = outputs.size(0);
    std::vector<int64_t> which = rows;
    if (which.empty())
        for (int64_t i = 0; i < r; ++i) which.push_back(i);
    CONVSCOPE_CHECK(static_cast<int64_t>(which.size()) == r, "one image per row");
    const at::Tensor index = torch::tensor(which, torch::kLong);
    if (similarity()) return cosine_rows(outputs, reference_);
    std::vector<int64_t> cls(static_cast<size_t>(r));
    for (int64_t i = 0; i < r; ++i) cls[static_cast<size_t>(i)] = classes_.at(static_cast<size_t>(which[i]));
    const at::Tensor c = torch::tensor(cls, torch::kLong);
    const Score score = target_->score;
    at::Tensor s = score == Score::Prob ? torch::softmax(outputs, 1) : outputs;
    if (!dense()) {
        s = s.gather(1, c.view({-1, 1})).view({-1});
        return score == Score::Sigmoid ? torch::sigmoid(s) : s;
    }
    const int64_t h = outputs.size(2), w = outputs.size(3);
    s = s.gather(1, c.view({-1, 1, 1, 1}).expand({r, 1, h, w})).squeeze(1);  // [R,H,W]
    if (score == Score::Sigmoid) s = torch::sigmoid(s);
    return (s * weights_.index_select(0, index).to(s.scalar_type())).sum({1, 2});
}

at::Tensor TargetScorer::class_probs(const at::Tensor& outputs, const std::vector<int64_t>& rows) const {
    if (similarity()) return at::Tensor();
    const at::Tensor out = outputs.detach().to(torch::kFloat);
    if (!dense()) return torch::softmax(out, 1);
    std::vector<int64_t> which = rows;
    if (which.empty())
        for (int64_t i = 0; i < outputs.size(0); ++i) which.push_back(i);
    // The region's mean logits [R,K] (one batched matrix product), then their softmax.
    const int64_t r = out.size(0), k = out.size(1), hw = out.size(2) * out.size(3);
    const at::Tensor wt = weights_.index_select(0, torch::tensor(which, torch::kLong)).reshape({r, hw, 1});
    return torch::softmax(torch::bmm(out.reshape({r, k, hw}), wt).squeeze(2), 1);
}

std::pair<at::Tensor, at::Tensor> TargetScorer::region_mean_scores(const at::Tensor& means,
                                                                   const std::vector<int64_t>& rows) const {
    CONVSCOPE_CHECK(reads_region_means() && means.dim() == 2 && means.size(0) == static_cast<int64_t>(rows.size()),
                    "region means [R,K] of a dense logit target, one row per image");
    std::vector<int64_t> cls;
    for (int64_t r : rows) cls.push_back(classes_.at(static_cast<size_t>(r)));
    const at::Tensor m = means.to(torch::kFloat);
    return {m.gather(1, torch::tensor(cls, torch::kLong).view({-1, 1})).view({-1}), torch::softmax(m, 1)};
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
