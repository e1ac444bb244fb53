#pragma once
// Describing a model that convscope did not train: its preprocessing (resize, centre crop,
// value range, channel order, mean/std) and class names, from options or presets, merged into
// the model's metadata (ModelMeta, the `convscope.json` extra file), written back into a model
// file by `convscope annotate`, and checks that the inputs look right for the model.
//
// Presets: "model" (the model's own metadata; the default), "imagenet" (torchvision's standard
// evaluation transform: Resize(256), CenterCrop(224), ImageNet's mean and std, RGB in [0,1]),
// "none" (no normalisation: pixels in [0,1], each item fitted to the input size).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "convscope/runtime/dataset.hpp"

namespace convscope {

class Model;
struct ModelMeta;

struct PreprocessOptions {
    std::string preset;               // "" or "model" (metadata), "imagenet", "none"
    std::vector<double> mean, std;    // per channel or one value; empty = from the preset
    int64_t resize = -1;              // shorter side; -1 = from the preset, 0 = fit directly
    std::vector<int64_t> crop;        // H,W centre crop (the model's input size); empty = preset
    double pixel_range = 0;           // 1 or 255; 0 = from the preset
    bool bgr = false;                 // true: channels in B,G,R order
    std::string classes_file;         // class names (see read_class_names); empty = metadata
    bool any() const;                 // whether any option is set
};

// Parses "model" | "imagenet" | "none"; UsageError otherwise.
const std::string& parse_preprocess_preset(const std::string& name);

// The model's metadata with the options applied: the preset first (model: the metadata as is),
// then each option given. Sets `source` to say where the result came from. The input shape:
// --crop sets H,W (C from the metadata, else 3); imagenet's crop is 3,224,224 unless the model
// records another input size. Throws Error for a class file that cannot be read. `warnings`
// (optional) receives a sentence when the options drop a normalisation the metadata asks for.
ModelMeta apply_preprocess_options(const ModelMeta& meta, const PreprocessOptions& options,
                                   std::vector<std::string>* warnings = nullptr);

// Reads class names: one per line (blank lines ignored; a line "0: 'tench, Tinca tinca'," as in
// the widespread ImageNet index text gives its quoted name), a JSON list of names, or a JSON
// object {"0": "name"} / {"0": ["wnid", "name"]} (ImageNet's class index file). Throws Error for
// a missing or empty file, duplicate or missing indices, or JSON that does not parse.
std::vector<std::string> read_class_names(const std::string& path);

// The metadata as convscope.json holds it, and back. model_meta_from_json throws Error naming
// the key for JSON that does not parse, wrong types, or values out of range.
nlohmann::json model_meta_to_json(const ModelMeta& meta);
ModelMeta model_meta_from_json(const std::string& text);

// Checks the metadata against the model (input shape known): mean/std sizes against the
// channels, the number of class names against the model's outputs. Throws Error naming the
// option or key to fix.
void validate_model_meta(const Model& model);

// Writes `model_path`'s TorchScript module to `out_path` (atomically) with `meta` as its
// convscope.json; every other part of the file is kept. Throws Error for an unreadable model.
void save_model_with_meta(const std::string& model_path, const ModelMeta& meta,
                          const std::string& out_path);

// The preprocessing for this model (its metadata) and data (float32 .npy: as is).
Preprocess preprocess_for(const Model& model, const Dataset& data);

// Warnings (one sentence each, naming --preprocess) when inputs look wrong for the model:
// images_nchw [N,C,H,W] model inputs made with `pre`. Where the first convolution feeds a
// BatchNorm, the convolution's per-channel means and variances on these inputs are compared
// with the running statistics the model was trained with: far off (typical channel's variance
// off by more than 4x, or its mean by more than 1.5 running standard deviations) means the
// inputs are not scaled or normalised as in training. Empty: fine, or nothing to compare with.
std::vector<std::string> input_warnings(const Model& model, const at::Tensor& images_nchw,
                                        const Preprocess& pre);

}  // namespace convscope
