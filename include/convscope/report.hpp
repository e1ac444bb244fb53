#pragma once
// The HTML report: runs every method on a model and data and writes one self-contained page,
// DIR/index.html, that opens from disk with no server and no network. Pictures are PNG files
// beside it (DIR/img/...), data is inline JSON, scripts and styles are inline.
//
// Sections: the model (layers with output shapes, parameters and receptive fields; accuracy on
// labelled data), filter grids with noise scores, a few correctly and wrongly classified inputs
// with their activation maps, occlusion maps with confounder flags and gradient attributions,
// the top-9 dataset patches of the first channels of the chosen layers, feature visualisations
// of those channels, and the dataset map (t-SNE of the penultimate layer: a scatter plot, a
// thumbnail map and an interactive pan/zoom/hover view over every point).
//
// Cost: one forward pass over eval_items, one over scan_items (patches), one over map_items
// (features) plus t-SNE of map_items points, occlusion (about (H/stride)^2 forward passes per
// example), the attributions (up to 33 passes per example and method) and feature visualisation
// (feature_vis_steps forward+backward passes of a batch per layer). The subset sizes keep it fast.
#include <cstdint>
#include <string>
#include <vector>

#include "convscope/progress.hpp"

namespace convscope {

class Model;
class Dataset;
class OutputDir;

struct ReportOptions {
    std::string title;                  // page title; "" = "convscope report: <model file>"
    // Layers for activation maps, top patches and feature visualisation. Empty = up to
    // max_layers conv layers spread over the depth (first and last included).
    std::vector<std::string> layers;
    int64_t max_layers = 4;
    int64_t eval_items = 10000;  // the first N items: accuracy and the pick of examples (>= 1)
    int64_t examples = 3;        // correctly and wrongly classified inputs shown (each, >= 1)
    int64_t max_filters = 64;    // filters per conv layer in the filter grids
    int64_t max_filter_layers = 4;  // conv layers with a filter grid
    int64_t scan_items = 2000;   // the first N items scanned for top patches (>= 1)
    int64_t patch_channels = 8;  // channels per layer with their top-9 patches
    int64_t vis_channels = 8;    // channels per layer with a feature visualisation (0 = none)
    int feature_vis_steps = 128;
    int64_t map_items = 2000;    // points on the dataset map (0 = no map; else >= 8, <= 70000)
    int map_iterations = 750;    // t-SNE iterations
    // Attribution methods (attribution_method_names()); empty = none.
    std::vector<std::string> attributions = {"saliency", "guided-backprop", "integrated-gradients",
                                             "grad-cam"};
    uint64_t seed = 0;           // t-SNE, feature visualisation, SmoothGrad
};

struct ReportResult {
    std::string index_html;       // path of index.html
    double accuracy = -1.0;       // on the evaluated items; -1 without labels
    int64_t evaluated = 0;        // items evaluated
    std::vector<int64_t> correct;  // dataset indices of the correctly classified examples shown
    std::vector<int64_t> wrong;    // ... and of the wrongly classified ones (or unlabelled ones)
    std::vector<std::string> layers;  // the chosen layers
    int64_t map_points = 0;       // points on the map
    std::vector<std::string> skipped;  // sections left out, with the reason
};

// Writes the report into `out` (files recorded with their meaning; the caller writes the
// manifest). The model's input shape must be known. Throws UsageError for bad options (sizes out
// of range, unknown attribution methods), Error for unknown layers (closest names) and what the
// methods throw; Cancelled if `progress` returns false. Progress covers all stages.
ReportResult write_report(const Model& model, const Dataset& data, OutputDir& out,
                          const ReportOptions& options, const ProgressFn& progress = {});

}  // namespace convscope
