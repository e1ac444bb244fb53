#pragma once
// Which map to trust: every chosen explanation method scored by every chosen metric on the same
// images and target (faithfulness.hpp, sanity.hpp), with each metric's direction, so that the
// command, the report and scripts rank the methods for this model the same way.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "convscope/methods/explain.hpp"
#include "convscope/methods/faithfulness.hpp"
#include "convscope/methods/sanity.hpp"
#include "convscope/runtime/run_context.hpp"

namespace convscope {

class Model;

enum class Metric {
    Deletion,                  // "deletion": curves MoRF and LeRF towards deletion_baseline
    Insertion,                 // "insertion": curves MoRF and LeRF from insertion_baseline
    Road,                      // "road": ROAD, MoRF and LeRF
    Infidelity,                // "infidelity"
    MaxSensitivity,            // "max-sensitivity"
    Randomisation,             // "randomisation": cascading model-parameter randomisation
    IndependentRandomisation,  // "independent-randomisation": each layer alone
    RandomLogit,               // "random-logit"
};
const std::vector<std::string>& metric_names();  // in enum order
const char* metric_name(Metric metric);
Metric parse_metric(const std::string& name);  // UsageError listing the names

struct EvaluationOptions {
    // Methods (explain_method_names); the default: the seven of occlusion, the gradients and RISE.
    std::vector<std::string> methods{"occlusion",            "saliency", "guided-backprop", "smoothgrad",
                                     "integrated-gradients", "grad-cam", "rise"};
    std::vector<Metric> metrics{Metric::Deletion,   Metric::Insertion,      Metric::Road,
                                Metric::Infidelity, Metric::MaxSensitivity, Metric::Randomisation,
                                Metric::RandomLogit};
    // The methods' knobs and the target (also the metrics' score). RISE runs with 1,000 masks
    // here (its own default is the paper's 4,000): the maps of small inputs are as clear, and
    // every metric that recomputes maps pays for each mask again.
    ExplainOptions explain = [] {
        ExplainOptions e;
        e.attribution.masks = 1000;
        return e;
    }();
    int steps = 100;         // deletion and insertion steps
    Baseline deletion_baseline;                            // Petsiuk et al.: zeros
    Baseline insertion_baseline{Baseline::Kind::Blur, 0};  // Petsiuk et al.: a blurred copy
    RoadOptions road;                  // percentages and noise (order and target set here)
    InfidelityOptions infidelity;      // samples, noise, normalize (target set here)
    SensitivityOptions sensitivity;    // samples, radius
    RandomInit randomisation_init = RandomInit::Statistics;  // how the checks redraw parameters
    int batch_size = 64;               // perturbed copies per forward pass
};

// One metric's values: a name such as "deletion_morf", its direction and what it measures.
struct MetricColumn {
    std::string name;
    bool higher_is_better = false;
    std::string meaning;
    std::map<std::string, at::Tensor> values;  // method -> [N] float32, one value per image
};

struct MethodCurves {
    std::map<std::string, at::Tensor> curves;  // "deletion_morf", ...: [N, points] float32
    std::vector<std::string> cascade_layers;   // randomisation: the layers, top first
    std::map<std::string, at::Tensor> cascade; // "spearman_abs", ...: [L,N] float32
    std::map<std::string, at::Tensor> independent;  // the same for each layer alone
};

struct EvaluationResult {
    std::vector<std::string> methods;
    std::vector<int64_t> targets;            // [N] the class explained per image (-1: similarity)
    std::vector<MetricColumn> columns;       // in the order of the metrics asked for
    std::map<std::string, MethodCurves> curves;  // per method
    std::vector<double> road_percentages;
    std::map<std::string, at::Tensor> maps;      // per method: Explanation::map [N,H,W]
    std::map<std::string, std::map<std::string, double>> seconds;  // method -> "map" / metric -> s
    // The mean of a column over the images per method, and the methods ordered best first.
    std::map<std::string, double> means(const MetricColumn& column) const;
    std::vector<std::string> ranking(const MetricColumn& column) const;
};

// Evaluates every method with every metric for images_nchw [N,C,H,W] float32. Throws
// UsageError for an unknown method, Error for the metrics' and methods' errors (checked for
// every method before the first map is computed where possible). The context's seed draws every
// random part; its progress runs over all methods and metrics.
EvaluationResult evaluate(const Model& model, const at::Tensor& images_nchw, const EvaluationOptions& options,
                          const RunContext& context = {});

// Results of parts of one evaluation (the same images and options, each part a share of the
// methods: the ranks of an MPI run) as bytes and back (LibTorch's pickle format), and merged
// into the result one evaluate() of all `methods` gives: columns in the order of their first
// appearance, each method's values, curves, cascades and maps as its part computed them.
// Throws Error for bytes that are not such a result or parts that miss a method.
std::string evaluation_bytes(const EvaluationResult& r);
EvaluationResult evaluation_from_bytes(const std::string& bytes);
EvaluationResult merge_evaluations(const std::vector<EvaluationResult>& parts, const std::vector<std::string>& methods);

}  // namespace convscope
