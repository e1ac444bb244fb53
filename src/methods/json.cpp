#include "convscope/methods/json.hpp"

#include <cmath>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "convscope/methods/embedding.hpp"
#include "convscope/methods/evaluation.hpp"
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

namespace {

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

nlohmann::json numbers(const at::Tensor& t) {
    const at::Tensor d = t.to(torch::kDouble).contiguous().view({-1});
    nlohmann::json out = nlohmann::json::array();
    for (int64_t i = 0; i < d.numel(); ++i) out.push_back(number_or_null(d[i].item<double>()));
    return out;
}

}  // namespace

nlohmann::json evaluation_json(const EvaluationResult& r, const std::vector<int64_t>& items) {
    nlohmann::json j = {{"methods", r.methods}, {"items", items}, {"targets", r.targets},
                        {"road_percentages", r.road_percentages}};
    nlohmann::json metrics = nlohmann::json::array();
    for (const auto& c : r.columns) {
        nlohmann::json m = {{"name", c.name}, {"higher_is_better", c.higher_is_better}, {"meaning", c.meaning},
                            {"ranking", r.ranking(c)}};
        for (const auto& [method, mean] : r.means(c)) m["mean"][method] = number_or_null(mean);
        for (const auto& [method, v] : c.values) m["values"][method] = numbers(v);
        metrics.push_back(m);
    }
    j["metrics"] = metrics;
    j["curves"] = nlohmann::json::object();
    j["randomisation"] = nlohmann::json::object();
    for (const auto& [method, mc] : r.curves) {
        for (const auto& [name, curve] : mc.curves) j["curves"][method][name] = numbers(curve.mean(0));
        if (!mc.cascade_layers.empty()) {
            nlohmann::json rj = {{"layers", mc.cascade_layers}};
            for (const auto& [name, t] : mc.cascade) rj["cascading"][name] = numbers(t.mean(1));
            for (const auto& [name, t] : mc.independent) rj["independent"][name] = numbers(t.mean(1));
            j["randomisation"][method] = rj;
        }
    }
    j["seconds"] = r.seconds;
    return j;
}

}  // namespace convscope
