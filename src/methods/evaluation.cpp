// The evaluation suite: each method's maps once, then each metric on them, collected as columns
// with their direction.
#include "convscope/methods/evaluation.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope {

namespace {
constexpr EnumTable<Metric, 9> kMetricNames = {{
    {Metric::Deletion, "deletion"},
    {Metric::Insertion, "insertion"},
    {Metric::Road, "road"},
    {Metric::Infidelity, "infidelity"},
    {Metric::MaxSensitivity, "max-sensitivity"},
    {Metric::Randomisation, "randomisation"},
    {Metric::IndependentRandomisation, "independent-randomisation"},
    {Metric::RandomLogit, "random-logit"},
    {Metric::Randomisation, "randomization"},
}};
}  // namespace

const std::vector<std::string>& metric_names() {
    static const std::vector<std::string> names = enum_names(kMetricNames);
    return names;
}
const char* metric_name(Metric metric) { return enum_name(kMetricNames, metric); }
Metric parse_metric(const std::string& name) { return parse_enum(kMetricNames, name, "metric"); }

std::map<std::string, double> EvaluationResult::means(const MetricColumn& column) const {
    std::map<std::string, double> out;
    for (const auto& [method, v] : column.values) out[method] = v.to(torch::kDouble).mean().item<double>();
    return out;
}

std::vector<std::string> EvaluationResult::ranking(const MetricColumn& column) const {
    const auto m = means(column);
    std::vector<std::string> order;
    for (const auto& method : methods)
        if (m.count(method)) order.push_back(method);
    // Best first; a method whose mean is not a number goes last.
    std::stable_sort(order.begin(), order.end(), [&](const std::string& a, const std::string& b) {
        const double x = m.at(a), y = m.at(b);
        if (std::isnan(x) || std::isnan(y)) return !std::isnan(x) && std::isnan(y);
        return column.higher_is_better ? x > y : x < y;
    });
    return order;
}

namespace {

bool asks(const EvaluationOptions& o, Metric m) {
    return std::find(o.metrics.begin(), o.metrics.end(), m) != o.metrics.end();
}

// What can be checked before any map is computed.
void check_options(const Model& model, const at::Tensor& images, const EvaluationOptions& o) {
    check_input(model, images);
    if (o.methods.empty()) throw UsageError("no method to evaluate: pass --methods saliency,grad-cam,...");
    if (o.metrics.empty()) throw UsageError("no metric to compute: pass --metrics deletion,insertion,...");
    for (const auto& m : o.methods) check_explain_method(m);
    if (asks(o, Metric::Deletion) || asks(o, Metric::Insertion)) check_curve_steps(o.steps, images.size(2) * images.size(3));
    if (asks(o, Metric::Road)) check_road_options(o.road);
    if (asks(o, Metric::Infidelity)) check_infidelity_options(o.infidelity);
    if (asks(o, Metric::MaxSensitivity)) check_sensitivity_options(o.sensitivity);
    if (asks(o, Metric::Randomisation) || asks(o, Metric::IndependentRandomisation)) check_randomisable(model);
    if (asks(o, Metric::RandomLogit)) check_random_logit_target(o.explain.target);
    check_target(o.explain.target, images.size(0));
}

class Columns {
public:
    explicit Columns(std::vector<MetricColumn>& cols) : cols_(cols) {}
    void add(const std::string& name, bool higher, const std::string& meaning, const std::string& method,
             const at::Tensor& values) {
        for (auto& c : cols_)
            if (c.name == name) {
                c.values[method] = values.to(torch::kFloat).contiguous();
                return;
            }
        cols_.push_back({name, higher, meaning, {{method, values.to(torch::kFloat).contiguous()}}});
    }

private:
    std::vector<MetricColumn>& cols_;
};

const char* const kSimilarities[] = {"spearman_abs", "spearman", "ssim", "hog"};

std::map<std::string, at::Tensor> similarity_map(const at::Tensor& sa, const at::Tensor& s, const at::Tensor& ssim,
                                                 const at::Tensor& hog) {
    return {{"spearman_abs", sa}, {"spearman", s}, {"ssim", ssim}, {"hog", hog}};
}

}  // namespace

EvaluationResult evaluate(const Model& model, const at::Tensor& images, const EvaluationOptions& o,
                          const RunContext& context) {
    ThreadScope threads(context);
    check_options(model, images, o);
    EvaluationResult r;
    r.methods = o.methods;
    r.road_percentages = o.road.percentages;
    Columns cols(r.columns);
    const double units = double(o.methods.size() * (o.metrics.size() + 1));
    double done = 0;
    auto part = [&] {
        RunContext sub = context;
        sub.progress = sub_progress(context.progress, done / units, (done + 1) / units);
        done += 1;
        return sub;
    };
    using clock = std::chrono::steady_clock;
    auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };

    for (const auto& method : o.methods) {
        auto t0 = clock::now();
        const Explanation e = explain(model, images, method, o.explain, part());
        r.seconds[method]["map"] = seconds_since(t0);
        r.maps[method] = e.map;
        if (r.targets.empty()) r.targets = e.targets;
        // The metrics score what the maps explain: the classes (and, on dense outputs, the pixels)
        // chosen for the clean images, fixed once here: the checks below find it fixed already.
        const Target fixed = fixed_target(model, images, o.explain.target, e.targets);
        const Explainer explainer = method_explainer(method, o.explain);
        MethodCurves& mc = r.curves[method];
        for (const Metric metric : o.metrics) {
            t0 = clock::now();
            const RunContext ctx = part();
            switch (metric) {
                case Metric::Deletion:
                case Metric::Insertion: {
                    const bool ins = metric == Metric::Insertion;
                    const std::string stem = ins ? "insertion" : "deletion";
                    for (const auto order : {RelevanceOrder::MostFirst, RelevanceOrder::LeastFirst}) {
                        CurveOptions co;
                        co.target = fixed;
                        co.insertion = ins;
                        co.order = order;
                        co.steps = o.steps;
                        co.baseline = ins ? o.insertion_baseline : o.deletion_baseline;
                        co.batch_size = o.batch_size;
                        RunContext half = ctx;
                        const bool first = order == RelevanceOrder::MostFirst;
                        half.progress = sub_progress(ctx.progress, first ? 0.0 : 0.5, first ? 0.5 : 1.0);
                        const CurveResult c = perturbation_curve(model, images, e.map, co, half);
                        const std::string name = stem + "_" + relevance_order_name(order);
                        // Deleting the most relevant pixels first should drop the score fast (a low
                        // area); inserting them first should raise it fast (a high area).
                        const bool higher = ins == first;
                        cols.add(name, higher,
                                 std::string("area under the score curve, ") + (ins ? "inserting" : "deleting") +
                                     (first ? " the most" : " the least") + " relevant pixels first",
                                 method, c.areas);
                        mc.curves[name] = c.curves;
                    }
                    break;
                }
                case Metric::Road: {
                    for (const auto order : {RelevanceOrder::MostFirst, RelevanceOrder::LeastFirst}) {
                        RoadOptions ro = o.road;
                        ro.target = fixed;
                        ro.order = order;
                        ro.batch_size = o.batch_size;
                        const bool first = order == RelevanceOrder::MostFirst;
                        RunContext half = ctx;
                        half.progress = sub_progress(ctx.progress, first ? 0.0 : 0.5, first ? 0.5 : 1.0);
                        const RoadResult rr = road(model, images, e.map, ro, half);
                        const std::string name = std::string("road_") + relevance_order_name(order);
                        cols.add(name, !first,
                                 std::string("mean score with the ") + (first ? "most" : "least") +
                                     " relevant pixels removed and imputed (ROAD)",
                                 method, rr.areas);
                        mc.curves[name] = rr.scores;
                        if (rr.kept.defined()) mc.curves[name + "_kept"] = rr.kept;
                    }
                    break;
                }
                case Metric::Infidelity: {
                    InfidelityOptions io = o.infidelity;
                    io.target = fixed;
                    io.batch_size = o.batch_size;
                    cols.add("infidelity", false, "squared error of the map's prediction of the score change under noise",
                             method, infidelity(model, images, e, io, ctx));
                    break;
                }
                case Metric::MaxSensitivity:
                    cols.add("max_sensitivity", false, "largest relative change of the map under small input noise",
                             method, max_sensitivity(model, images, e, explainer, fixed, o.sensitivity, ctx));
                    break;
                case Metric::Randomisation:
                case Metric::IndependentRandomisation: {
                    RandomisationOptions ro;
                    const bool cascading = metric == Metric::Randomisation;
                    ro.mode = cascading ? RandomisationMode::Cascading : RandomisationMode::Independent;
                    ro.init = o.randomisation_init;
                    const RandomisationResult rr = randomisation(model, images, e, explainer, fixed, ro, ctx);
                    mc.cascade_layers = rr.layers;
                    auto sims = similarity_map(rr.spearman_abs, rr.spearman, rr.ssim, rr.hog);
                    (cascading ? mc.cascade : mc.independent) = sims;
                    for (const char* s : kSimilarities)
                        cols.add(std::string(cascading ? "randomisation_" : "independent_randomisation_") + s, false,
                                 std::string("mean ") + s + " similarity to the original map over the " +
                                     (cascading ? "cascade of randomised layers" : "layers randomised one at a time"),
                                 method, sims.at(s).mean(0));
                    break;
                }
                case Metric::RandomLogit: {
                    const RandomLogitResult rl = random_logit(model, images, e, explainer, fixed, ctx);
                    auto sims = similarity_map(rl.spearman_abs, rl.spearman, rl.ssim, rl.hog);
                    for (const char* s : kSimilarities)
                        cols.add(std::string("random_logit_") + s, false,
                                 std::string(s) + " similarity to the map of a random other class", method, sims.at(s));
                    break;
                }
            }
            r.seconds[method][metric_name(metric)] = seconds_since(t0);
        }
    }
    report_progress(context.progress, 1.0);
    return r;
}

}  // namespace convscope
