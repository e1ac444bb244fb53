// An evaluation split by methods (the ranks of an MPI run) put back together: results as bytes
// (LibTorch's pickle: a JSON string for the names and numbers, a dict of the tensors) and merged.
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "convscope/methods/evaluation.hpp"
#include "convscope/runtime/error.hpp"

namespace convscope {
namespace {

const char kSep = '\x1f';  // between the parts of a tensor's key: no name holds it

std::string key(std::initializer_list<std::string> parts) {
    std::string k;
    for (const auto& p : parts) k += (k.empty() ? "" : std::string(1, kSep)) + p;
    return k;
}

}  // namespace

std::string evaluation_bytes(const EvaluationResult& r) {
    nlohmann::json j = {{"methods", r.methods}, {"targets", r.targets}, {"road_percentages", r.road_percentages},
                        {"seconds", r.seconds}};
    c10::Dict<std::string, at::Tensor> tensors;
    for (const auto& c : r.columns) {
        j["columns"].push_back({{"name", c.name}, {"higher_is_better", c.higher_is_better}, {"meaning", c.meaning}});
        for (const auto& [m, v] : c.values) tensors.insert(key({"col", c.name, m}), v.contiguous());
    }
    for (const auto& [m, mc] : r.curves) {
        j["cascade_layers"][m] = mc.cascade_layers;
        for (const auto& [n, t] : mc.curves) tensors.insert(key({"curve", m, n}), t.contiguous());
        for (const auto& [n, t] : mc.cascade) tensors.insert(key({"cascade", m, n}), t.contiguous());
        for (const auto& [n, t] : mc.independent) tensors.insert(key({"independent", m, n}), t.contiguous());
    }
    for (const auto& [m, t] : r.maps) tensors.insert(key({"map", m}), t.contiguous());
    const std::vector<char> bytes =
        torch::jit::pickle_save(c10::ivalue::Tuple::create({c10::IValue(j.dump()), c10::IValue(tensors)}));
    return std::string(bytes.begin(), bytes.end());
}

EvaluationResult evaluation_from_bytes(const std::string& bytes) {
    EvaluationResult r;
    try {
        const c10::IValue v = torch::jit::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
        const auto& elems = v.toTupleRef().elements();
        const nlohmann::json j = nlohmann::json::parse(elems.at(0).toStringRef());
        r.methods = j.at("methods").get<std::vector<std::string>>();
        r.targets = j.at("targets").get<std::vector<int64_t>>();
        r.road_percentages = j.at("road_percentages").get<std::vector<double>>();
        r.seconds = j.at("seconds").get<std::map<std::string, std::map<std::string, double>>>();
        if (j.contains("columns"))
            for (const auto& c : j["columns"])
                r.columns.push_back({c.at("name").get<std::string>(), c.at("higher_is_better").get<bool>(),
                                     c.at("meaning").get<std::string>(), {}});
        if (j.contains("cascade_layers"))
            for (const auto& [m, layers] : j["cascade_layers"].items())
                r.curves[m].cascade_layers = layers.get<std::vector<std::string>>();
        for (const auto& entry : elems.at(1).toGenericDict()) {
            const std::string k = entry.key().toStringRef();
            const at::Tensor t = entry.value().toTensor();
            std::vector<std::string> parts;
            for (size_t a = 0, b; a <= k.size(); a = b + 1) {
                b = k.find(kSep, a);
                if (b == std::string::npos) b = k.size();
                parts.push_back(k.substr(a, b - a));
            }
            if (parts[0] == "col" && parts.size() == 3) {
                for (auto& c : r.columns)
                    if (c.name == parts[1]) c.values[parts[2]] = t;
            } else if (parts[0] == "curve" && parts.size() == 3) {
                r.curves[parts[1]].curves[parts[2]] = t;
            } else if (parts[0] == "cascade" && parts.size() == 3) {
                r.curves[parts[1]].cascade[parts[2]] = t;
            } else if (parts[0] == "independent" && parts.size() == 3) {
                r.curves[parts[1]].independent[parts[2]] = t;
            } else if (parts[0] == "map" && parts.size() == 2) {
                r.maps[parts[1]] = t;
            }
        }
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        throw Error(std::string("not the bytes of an evaluation result: ") + e.what());
    }
    return r;
}

EvaluationResult merge_evaluations(const std::vector<EvaluationResult>& parts, const std::vector<std::string>& methods) {
    EvaluationResult r;
    r.methods = methods;
    for (const auto& m : methods) {
        const EvaluationResult* from = nullptr;
        for (const auto& p : parts)
            if (std::find(p.methods.begin(), p.methods.end(), m) != p.methods.end()) from = &p;
        if (!from) throw Error("no part of the evaluation holds method '" + m + "'");
        if (r.targets.empty()) {
            r.targets = from->targets;
            r.road_percentages = from->road_percentages;
        }
        if (from->curves.count(m)) r.curves[m] = from->curves.at(m);
        if (from->maps.count(m)) r.maps[m] = from->maps.at(m);
        if (from->seconds.count(m)) r.seconds[m] = from->seconds.at(m);
        // Columns in the order one evaluation adds them: the first method's metrics first.
        for (const auto& c : from->columns) {
            if (!c.values.count(m)) continue;
            auto it = std::find_if(r.columns.begin(), r.columns.end(),
                                   [&](const MetricColumn& x) { return x.name == c.name; });
            if (it == r.columns.end()) {
                r.columns.push_back({c.name, c.higher_is_better, c.meaning, {}});
                it = r.columns.end() - 1;
            }
            it->values[m] = c.values.at(m);
        }
    }
    return r;
}

}  // namespace convscope
