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
#include <utility>
#include <vector>

#include "convscope/runtime/progress.hpp"

namespace convscope {

class Model;
class Dataset;
class OutputDir;

// Settings marked "auto" (-1) are chosen from the model's measured cost (see plan_report), so
// that a report of a large model on a small machine stays within about budget_seconds; a value
// given explicitly is used as is.
struct ReportOptions {
    std::string title;                  // page title; "" = "convscope report: <model file>"
    // Layers for activation maps, top patches and feature visualisation. Empty = up to
    // max_layers conv layers spread over the depth (first and last included).
    std::vector<std::string> layers;
    int64_t max_layers = 4;
    int64_t eval_items = -1;     // the first N items: accuracy and the pick of examples (>= 1; auto <= 10000)
    int64_t examples = 3;        // correctly and wrongly classified inputs shown (each, >= 1)
    int64_t max_filters = 64;    // filters per conv layer in the filter grids
    int64_t max_filter_layers = 4;  // conv layers with a filter grid
    int64_t scan_items = -1;     // the first N items scanned for top patches (>= 1; auto <= 2000)
    int64_t patch_channels = 8;  // channels per layer with their top-9 patches
    int64_t vis_channels = 8;    // channels per layer with a feature visualisation (0 = none)
    int feature_vis_steps = -1;  // optimisation steps (>= 1; auto 32..128)
    // Side of the feature visualisations in pixels (0 = the input size; auto: at most 128 where
    // the layer's part of the model takes that size).
    int64_t feature_vis_size = -1;
    int64_t map_items = -1;      // points on the dataset map (0 = no map; else >= 8, <= 70000; auto <= 2000)
    int map_iterations = 750;    // t-SNE iterations
    // A `convscope embed` output folder shown as the map instead of computing one (any number
    // of points, made from the same data; map_items and map_iterations are then unused).
    std::string map_path;
    int64_t occlusion_stride = -1;  // occluder step in pixels (>= 1; auto: half the patch, or more)
    int attribution_steps = -1;     // integrated gradients' steps and SmoothGrad's samples (auto 8..32)
    // Attribution methods (attribution_method_names()); empty = none.
    std::vector<std::string> attributions = {"saliency", "guided-backprop", "integrated-gradients",
                                             "grad-cam"};
    // "Which map to trust": the first N items (0 = no such section; auto: as many as a share of
    // the budget pays for, at most 8) evaluated with these metrics (metric_names()) for
    // occlusion and the attribution methods above; randomisation is dropped first where the
    // budget does not pay for it.
    int64_t trust_items = -1;
    std::vector<std::string> trust_metrics = {"deletion", "insertion", "randomisation", "random-logit"};
    double budget_seconds = 60.0;  // what the automatic settings aim at (> 0)
    uint64_t seed = 0;           // t-SNE, feature visualisation, SmoothGrad
};

// The automatic settings for a model and data: every "auto" field of ReportOptions resolved.
// forward_ms is the measured time of one image's forward pass (batches of 8, the best of a few
// runs); each section gets a share of the budget and the largest setting that fits it.
struct ReportPlan {
    double forward_ms = 0;
    int64_t eval_items = 0, scan_items = 0, map_items = 0;
    int feature_vis_steps = 0;
    std::vector<int64_t> feature_vis_size;  // per chosen layer (0 = the input size)
    int64_t occlusion_patch = 0, occlusion_stride = 0;
    int attribution_steps = 0;
    int64_t trust_items = 0;                 // 0: no "Which map to trust" section
    int trust_steps = 20;                    // its deletion and insertion steps
    std::vector<std::string> trust_metrics;  // the metrics that fit the budget
    std::string trust_note;                  // why a metric or the section was left out ("" = none)
};
ReportPlan plan_report(const Model& model, const Dataset& data, const std::vector<std::string>& layers,
                       const ReportOptions& options);

struct ReportResult {
    std::string index_html;       // path of index.html
    double accuracy = -1.0;       // on the evaluated items; -1 without labels
    int64_t evaluated = 0;        // items evaluated
    std::vector<int64_t> correct;  // dataset indices of the correctly classified examples shown
    std::vector<int64_t> wrong;    // ... and of the wrongly classified ones (or unlabelled ones)
    std::vector<std::string> layers;  // the chosen layers
    int64_t map_points = 0;       // points on the map
    std::vector<std::string> skipped;  // sections left out, with the reason
    ReportPlan plan;                   // the settings used
    // Wall seconds of each section in order: plan, accuracy, filters, examples, patches,
    // feature_vis, map.
    std::vector<std::pair<std::string, double>> stage_seconds;
};

// Writes the report into `out` (files recorded with their meaning; the caller writes the
// manifest). The model's input shape must be known. Throws UsageError for bad options (sizes out
// of range, unknown attribution methods), Error for unknown layers (closest names) and what the
// methods throw; Cancelled if `progress` returns false. Progress covers all stages.
ReportResult write_report(const Model& model, const Dataset& data, OutputDir& out,
                          const ReportOptions& options, const ProgressFn& progress = {});

}  // namespace convscope
