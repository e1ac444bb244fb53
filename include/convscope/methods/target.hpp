#pragma once
// What a method explains and what it compares against, shared by occlusion and the
// attributions: the Target (which class's score, per image) and the Baseline (the reference
// input that occluded windows and integrated gradients' path start from).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace convscope {

// Which class each image's score is taken from.
struct Target {
    enum class Kind {
        Predicted,  // the class with the largest output for the clean image ("pred")
        Label,      // the image's label ("label")
        Class,      // one fixed class for every image ("3")
    };
    Kind kind = Kind::Predicted;
    int64_t class_index = -1;     // Kind::Class: in [0, classes)
    std::vector<int64_t> labels;  // Kind::Label: one per image, -1 = unknown
};
// Parses "pred" | "label" | a class index >= 0. Throws UsageError otherwise.
Target parse_target(const std::string& spec);
// "pred", "label" or the class index.
std::string target_name(const Target& target);
// Checks what can be checked before the model runs: a class index >= 0, one label per image
// (n images), every label known. Throws Error naming the fix.
void check_target(const Target& target, int64_t n);
// The class explained for images [first, first + B) from their outputs [B,K]. Throws Error for
// a class or label outside [0, K).
std::vector<int64_t> resolve_targets(const Target& target, const at::Tensor& outputs_bk, int64_t first = 0);

// The reference input.
struct Baseline {
    enum class Kind {
        Zero,      // all zeros in model-input space ("zero", "0")
        Mean,      // every pixel set to the image's own mean of that channel ("mean")
        Blur,      // the image blurred with a Gaussian of sigma = value pixels ("blur", "blur:SIGMA")
        Constant,  // every value set to `value` ("0.5", "-1")
    };
    Kind kind = Kind::Zero;
    double value = 0.0;  // Constant: the fill; Blur: sigma in pixels (<= 0: the method's automatic one)
};
// Parses "zero" | "mean" | "blur" | "blur:SIGMA" | a number (0 is Zero). Throws UsageError
// otherwise.
Baseline parse_baseline(const std::string& spec);
// The spec parse_baseline reads back.
std::string baseline_name(const Baseline& baseline);
// Throws Error for a non-finite fill or a negative or non-finite sigma.
void check_baseline(const Baseline& baseline);
// The baseline images [N,C,H,W] float32 for images [N,C,H,W]; Blur with value <= 0 uses
// sigma = max(H, W) / auto_sigma_divisor. Blurs repeat the edge pixels outwards.
at::Tensor baseline_images(const at::Tensor& images_nchw, const Baseline& baseline, double auto_sigma_divisor);

}  // namespace convscope
