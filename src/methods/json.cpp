#include "convscope/methods/json.hpp"

#include <cmath>
#include <nlohmann/json.hpp>

#include "convscope/methods/embedding.hpp"
#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/json.hpp"

namespace convscope {

nlohmann::json to_json(const OcclusionSummary& s, const std::vector<std::string>& names) {
    nlohmann::json j = {{"target", s.target},
                        {"target_name", class_name(names, s.target)},
                        {"predicted", s.predicted},
                        {"predicted_name", class_name(names, s.predicted)},
                        {"clean_score", s.clean_score},
                        {"clean_prob", s.clean_prob},
                        {"max_drop", s.max_drop},
                        {"max_position", {s.max_py, s.max_px}},
                        {"max_window", to_json(s.max_window)},
                        {"important_region", to_json(s.important)}};
    auto& flags = j["confounders"] = nlohmann::json::array();
    for (const auto& f : s.confounders)
        flags.push_back({{"position", {f.py, f.px}},
                         {"window", to_json(f.window)},
                         {"class", f.new_class},
                         {"class_name", class_name(names, f.new_class)},
                         {"prob", f.new_prob},
                         {"drop", f.drop}});
    return j;
}

nlohmann::json to_json(const EmbeddingResult& r) {
    const TsneResult& t = r.tsne;
    return {{"metric_k", r.metric_k},
            {"knn_accuracy", std::isfinite(r.knn_accuracy) ? nlohmann::json(r.knn_accuracy) : nlohmann::json()},
            {"neighbour_preservation", r.neighbour_preservation},
            {"kl_divergence", t.kl_divergence},
            {"gradient", t.exact ? "exact" : "fft"},
            {"neighbours", t.neighbours},
            {"learning_rate", t.learning_rate},
            {"iterations", t.iterations},
            {"seconds",
             {{"pca", t.pca_seconds},
              {"neighbours", t.neighbours_seconds},
              {"affinities", t.affinities_seconds},
              {"optimisation", t.optimisation_seconds},
              {"metrics", r.metrics_seconds}}}};
}

}  // namespace convscope
