#pragma once
// What a method explains and what it compares against, shared by occlusion, the attributions and
// feature visualisation: the Target (which score, per image: a class's logit or probability, a
// class over a region of a segmentation output, the similarity with a reference) and the
// Baseline (the reference input that occluded windows and integrated gradients' path start from).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace convscope {

class Model;

// How a class's score is read from the output.
enum class Score {
    Logit,    // the raw output ("logit")
    Prob,     // softmax over the classes, dimension 1 ("prob")
    Sigmoid,  // the sigmoid of the class's logit, each class on its own: multi-label models ("sigmoid")
};
// "logit" | "prob" | "sigmoid"; the parser throws UsageError naming them.
const char* score_name(Score score);
Score parse_score(const std::string& name);

// The pixels of a dense output [N,K,H,W] (segmentation) whose mean score is explained. Fixed
// from the clean image, so that perturbed copies are scored on the same pixels.
struct Region {
    enum class Kind {
        Pred,  // the pixels the clean prediction assigns to the target class ("pred", the default)
        All,   // every pixel ("all")
        Box,   // the pixels [x0, x1) x [y0, y1) of the output ("box:x0,y0,x1,y1")
        Mask,  // the nonzero pixels of a picture the size of the output ("mask:FILE.png")
    };
    Kind kind = Kind::Pred;
    int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // Box
    at::Tensor mask;                         // Mask: [H,W] bool, or [N,H,W] bool: one region per
                                             // image (fixed_target, explain.hpp)
    std::string mask_path;                   // Mask: the file it was read from
};
// Parses "pred" | "all" | "box:x0,y0,x1,y1" | "mask:FILE" (reads the file: any image; a pixel
// belongs to the region where any channel is above one half). Throws UsageError for a bad
// spec, Error for a file that cannot be read.
Region parse_region(const std::string& spec);
std::string region_name(const Region& region);

// What each image's score is.
struct Target {
    enum class Kind {
        Predicted,   // the class with the largest output for the clean image ("pred"); on dense
                     // outputs the class predicted at the most pixels of the region (of the
                     // whole output for the regions pred and all)
        Label,       // the image's label ("label"; classifiers)
        Class,       // one fixed class for every image ("3")
        Similarity,  // the cosine similarity of the output with a reference's output
                     // ("similarity:INDEX" or "similarity:IMAGE"; Stylianou et al. 2019)
        PerImage,    // a class per image chosen by the caller, in `labels` (e.g. the report's
                     // class of each segmentation example); any output with a class axis
    };
    Kind kind = Kind::Predicted;
    int64_t class_index = -1;     // Kind::Class: in [0, classes)
    std::vector<int64_t> labels;  // Kind::Label: one per image, -1 = unknown; Kind::PerImage: the classes
    Score score = Score::Logit;   // class targets: what is read from the output
    Region region;                // dense outputs [N,K,H,W] only
    std::string reference;        // Similarity: the item index or image the caller reads
    at::Tensor reference_input;   // Similarity: the reference as model input [1,C,H,W]
};
// Parses "pred" | "label" | a class index >= 0 | "similarity:REF" (REF kept in
// Target::reference; the caller sets reference_input). Throws UsageError otherwise.
Target parse_target(const std::string& spec);
// "pred", "label", the class index, "similarity:REF" or "per-image".
std::string target_name(const Target& target);
// Checks what can be checked before the model runs: a class index >= 0, one label per image
// (n images), every label known, a reference input for similarity. Throws Error naming the fix.
void check_target(const Target& target, int64_t n);

// A target fixed for a batch of images from their clean outputs: what the images and perturbed
// copies of them are scored with. Outputs are [B,K] (classes), [B,K,H,W] (dense classes) or,
// for similarity, any shape (flattened per image).
class TargetScorer {
public:
    // Resolves the target for images [first, first + B) from their clean outputs [B,...]
    // (labels are read from `first` on). Similarity runs the model on the reference. Throws
    // Error for a class or label outside [0, K), a region outside the output or empty, a mask
    // of the wrong size, a class target on an output without a class axis, an output the
    // reference's does not match.
    TargetScorer(const Model& model, const Target& target, const at::Tensor& clean_outputs, int64_t first = 0);
    // [B] the class explained per image (-1 for similarity).
    const std::vector<int64_t>& classes() const { return classes_; }
    // Output [N,K,H,W] with a class target.
    bool dense() const { return weights_.defined(); }
    // Output [N,K] with a class target (the approximate occlusion's corrections need this).
    bool classifier() const { return !dense() && !similarity(); }
    bool similarity() const { return reference_.defined(); }
    // [B,H,W] float32: 1 / (pixels of the region) on its pixels, 0 elsewhere (dense only).
    const at::Tensor& region_weights() const { return weights_; }
    // Scores [R] of outputs [R,...] (differentiable): row r is scored as image rows[r] (an
    // index into the batch; empty: row r is image r).
    at::Tensor scores(const at::Tensor& outputs, const std::vector<int64_t>& rows = {}) const;
    // Dense with the logit score: a row's score and class probabilities follow from its region's
    // mean logits alone (its output's channels summed with region_weights()), which the
    // incremental occlusion computes from the changed part of the output (region_mean_scores).
    bool reads_region_means() const { return dense() && target_->score == Score::Logit; }
    // Scores [R] (as scores) and class probabilities [R,K] (as class_probs) of rows whose region
    // mean logits are means [R,K]; row r is image rows[r]. Needs reads_region_means().
    std::pair<at::Tensor, at::Tensor> region_mean_scores(const at::Tensor& means, const std::vector<int64_t>& rows) const;
    // [R,K] the class probabilities each row's most likely class is read from: the softmax of
    // the logits, for dense outputs of their mean over the image's region; undefined for
    // similarity.
    at::Tensor class_probs(const at::Tensor& outputs, const std::vector<int64_t>& rows = {}) const;

private:
    const Target* target_;
    std::vector<int64_t> classes_;
    at::Tensor weights_;    // dense: [B,H,W]
    at::Tensor reference_;  // similarity: [F], unit length
};

// The model's output for a similarity reference [1,C,H,W], flattened to unit length [F]. Throws
// Error for an undefined reference or a zero output.
at::Tensor unit_reference(const Model& model, const at::Tensor& reference_input);
// Every class's score [N,K] of outputs [N,K] or [N,K,H,W] (differentiable), read as target.score
// says (target.kind and class_index are not used); of a dense output the mean over
// target.region, fixed without a clean image: all, a box or a mask (pred, the default, counts
// as all). For a similarity target [N,1]: the cosine similarity with `reference`
// (unit_reference). For objectives without a clean image (feature visualisation). Throws Error
// for an output of another shape and a region that does not fit it.
at::Tensor every_class_score(const at::Tensor& outputs, const Target& target, const at::Tensor& reference = {});

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
