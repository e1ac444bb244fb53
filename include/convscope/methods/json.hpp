#pragma once
// The one JSON shape of each method result that people and scripts read, used by the CLI, the
// explorer and the report alike (the runtime's structs: convscope/runtime/json.hpp).
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace convscope {

struct OcclusionSummary;
struct EmbeddingResult;

// {"target", "target_name", "predicted", "predicted_name", "clean_score", "clean_prob",
//  "max_drop", "max_position": [py, px], "max_window": box, "important_region": box,
//  "confounders": [{"position": [py, px], "window": box, "class", "class_name", "prob",
//  "drop"}]}, boxes as [y0, x0, y1, x1] in input pixels.
nlohmann::json to_json(const OcclusionSummary& summary, const std::vector<std::string>& class_names);

// The map's quality and how it was made: {"metric_k", "knn_accuracy" (null without labels),
// "neighbour_preservation", "kl_divergence", "gradient": "exact"|"fft", "neighbours",
// "learning_rate", "iterations", "seconds": {"pca", "neighbours", "affinities",
// "optimisation", "metrics"}}.
nlohmann::json to_json(const EmbeddingResult& result);

}  // namespace convscope
