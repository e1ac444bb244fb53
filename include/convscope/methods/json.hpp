#pragma once
// The one JSON shape of each method result that people and scripts read, used by the CLI, the
// explorer and the report alike (the runtime's structs: convscope/runtime/json.hpp).
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace convscope {

struct OcclusionSummary;
struct EmbeddingResult;
struct EvaluationResult;

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

// The evaluation of the explanation methods: {"methods", "items" (the data indices),
// "targets", "metrics": {name: {"higher_is_better", "meaning", "mean": {method: value},
// "ranking": [methods, best first], "values": {method: [one per item]}}} in the order computed,
// "curves": {method: {name: [mean over the items per point]}}, "road_percentages",
// "randomisation": {method: {"layers", "cascading"/"independent": {similarity: [mean per
// layer]}}}, "seconds": {method: {"map" or metric: s}}}. Non-finite values are null. (Not named
// to_json: nlohmann's lookup of to_json overloads would need the struct complete everywhere.)
nlohmann::json evaluation_json(const EvaluationResult& result, const std::vector<int64_t>& items);

}  // namespace convscope
