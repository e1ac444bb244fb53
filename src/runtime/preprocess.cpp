// Model descriptions from options and presets, class name files, the convscope.json metadata,
// annotated model files and the check that inputs look like the model's training inputs.
#include "convscope/runtime/preprocess.hpp"
#include "convscope/runtime/json.hpp"

#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <limits>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope {

namespace fs = std::filesystem;

bool PreprocessOptions::any() const {
    return !preset.empty() || !mean.empty() || !std.empty() || resize >= 0 || !crop.empty() ||
           pixel_range != 0 || bgr || !classes_file.empty();
}

const std::string& parse_preprocess_preset(const std::string& name) {
    static const std::vector<std::string> names = {"model", "imagenet", "none"};
    for (const auto& n : names)
        if (n == name) return n;
    throw UsageError("unknown --preprocess '" + name +
                     "': use model (the model's metadata), imagenet (resize 256, crop 224, "
                     "ImageNet mean/std) or none (pixels in [0,1])");
}

ModelMeta apply_preprocess_options(const ModelMeta& base, const PreprocessOptions& o,
                                   std::vector<std::string>* warnings) {
    ModelMeta m = base;
    const std::string preset = o.preset.empty() ? "model" : parse_preprocess_preset(o.preset);
    std::vector<std::string> given;
    if (preset == "imagenet") {
        m.mean = {0.485, 0.456, 0.406};
        m.std = {0.229, 0.224, 0.225};
        m.resize = 256;
        m.pixel_range = 1.0;
        m.bgr = false;
        if (m.input_shape.empty()) m.input_shape = {3, 224, 224};
        m.source = "--preprocess imagenet";
    } else if (preset == "none") {
        if (warnings && (!base.mean.empty() || !base.std.empty()))
            warnings->push_back("the model's metadata asks for normalisation (" +
                                base.preprocess().describe() +
                                ") but --preprocess none feeds it plain [0,1] pixels: its "
                                "predictions may be wrong; drop --preprocess none to use the metadata");
        m.mean.clear();
        m.std.clear();
        m.resize = 0;
        m.pixel_range = 1.0;
        m.bgr = false;
        m.source = "--preprocess none";
    }
    if (!o.mean.empty()) m.mean = o.mean, given.push_back("--mean");
    if (!o.std.empty()) m.std = o.std, given.push_back("--std");
    if (o.resize >= 0) m.resize = o.resize, given.push_back("--resize");
    if (!o.crop.empty()) {
        if (o.crop.size() != 2 || o.crop[0] <= 0 || o.crop[1] <= 0)
            throw UsageError("--crop takes HxW (like 224x224) or one size N");
        const int64_t c = m.input_shape.size() == 3 ? m.input_shape[0] : 3;
        m.input_shape = {c, o.crop[0], o.crop[1]};
        given.push_back("--crop");
    }
    if (o.pixel_range != 0) m.pixel_range = o.pixel_range, given.push_back("--pixel-range");
    if (o.bgr) m.bgr = true, given.push_back("--bgr");
    if (!given.empty()) {
        std::string list;
        for (size_t i = 0; i < given.size(); ++i) list += (i ? ", " : "") + given[i];
        if (preset != "model") m.source += " with " + list;
        else m.source = base.source.empty() ? list : base.source + " with " + list;
    }
    if (!o.classes_file.empty()) {
        m.class_names = read_class_names(o.classes_file);
        m.classes_source = "--classes " + o.classes_file;
    }
    return m;
}

namespace {

using detail::trim;

// Names from an indexed map: indices 0..K-1 each exactly once.
std::vector<std::string> from_indexed(const std::map<int64_t, std::string>& by_index,
                                      const std::string& path) {
    std::vector<std::string> out;
    int64_t expect = 0;
    for (const auto& [i, name] : by_index) {
        if (i != expect)
            throw Error("class file " + path + " has no name for class " + std::to_string(expect) +
                        ": give every index from 0 once");
        out.push_back(name);
        ++expect;
    }
    return out;
}

}  // namespace

std::vector<std::string> read_class_names(const std::string& path) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))
        throw Error("class file " + path + " does not exist: give a text file with one class name per line");
    const std::string text = read_file(path);
    const std::string body = trim(text);
    if (body.empty()) throw Error("class file " + path + " is empty: give one class name per line");
    std::vector<std::string> names;
    const size_t after_brace = body.find_first_not_of(" \t\r\n", 1);
    const bool json_text = body[0] == '[' || (body[0] == '{' && after_brace != std::string::npos &&
                                              body[after_brace] == '"');
    if (json_text) {
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(body);
        } catch (const std::exception& e) {
            throw Error("class file " + path + " is not valid JSON (" + std::string(e.what()) +
                        "): give a JSON list of names or one name per line");
        }
        if (j.is_array()) {
            for (const auto& v : j) {
                if (!v.is_string()) throw Error("class file " + path + ": every entry of the JSON list must be a name (a string)");
                names.push_back(v.get<std::string>());
            }
        } else if (j.is_object()) {
            std::map<int64_t, std::string> by_index;
            for (const auto& [k, v] : j.items()) {
                int64_t i = -1;
                try {
                    size_t used = 0;
                    i = std::stoll(k, &used);
                    if (used != k.size()) i = -1;
                } catch (const std::exception&) {
                }
                std::string name;
                if (v.is_string()) name = v.get<std::string>();
                else if (v.is_array() && !v.empty() && v.back().is_string()) name = v.back().get<std::string>();
                if (i < 0 || name.empty())
                    throw Error("class file " + path + ": JSON objects map class numbers to names, as {\"0\": \"tench\"} or {\"0\": [\"n01440764\", \"tench\"]}");
                if (!by_index.emplace(i, name).second) throw Error("class file " + path + " names class " + k + " twice");
            }
            names = from_indexed(by_index, path);
        } else {
            throw Error("class file " + path + ": give a JSON list of names");
        }
    } else {
        // Plain lines, or the "{0: 'tench, Tinca tinca',\n 1: ...}" text of ImageNet's index.
        static const std::regex indexed(R"(^\s*\{?\s*(\d+)\s*:\s*(['"])(.*)\2\s*,?\s*\}?\s*$)");
        std::istringstream in(text);
        std::string line;
        std::map<int64_t, std::string> by_index;
        bool any_indexed = false, any_plain = false;
        while (std::getline(in, line)) {
            const std::string t = trim(line);
            if (t.empty()) continue;
            std::smatch m;
            if (std::regex_match(t, m, indexed)) {
                any_indexed = true;
                const int64_t i = std::stoll(m[1].str());
                if (!by_index.emplace(i, m[3].str()).second)
                    throw Error("class file " + path + " names class " + m[1].str() + " twice");
            } else {
                any_plain = true;
                names.push_back(t);
            }
        }
        if (any_indexed && any_plain)
            throw Error("class file " + path + " mixes numbered lines (0: 'name') with plain names: use one form");
        if (any_indexed) names = from_indexed(by_index, path);
    }
    if (names.empty()) throw Error("class file " + path + " holds no class names");
    return names;
}

nlohmann::json model_meta_to_json(const ModelMeta& m) {
    nlohmann::json j = nlohmann::json::object();
    if (!m.input_shape.empty()) j["input_shape"] = m.input_shape;
    if (!m.mean.empty()) j["mean"] = m.mean;
    if (!m.std.empty()) j["std"] = m.std;
    if (m.resize > 0) j["resize"] = m.resize;
    if (m.pixel_range != 1.0) j["pixel_range"] = m.pixel_range;
    if (m.bgr) j["bgr"] = true;
    if (!m.class_names.empty()) j["class_names"] = m.class_names;
    if (!m.dataset.empty()) j["dataset"] = m.dataset;
    return j;
}

ModelMeta model_meta_from_json(const std::string& text) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
        std::string what = e.what();
        throw Error("is not valid JSON (" + what + ")");
    }
    if (!j.is_object()) throw Error("must be a JSON object with keys such as input_shape, mean, std");
    ModelMeta m;
    auto key = [&](const char* name, auto& field, auto check) {
        if (!j.contains(name) || j[name].is_null()) return;
        try {
            j[name].get_to(field);
        } catch (const std::exception&) {
            throw Error(std::string("has a '") + name + "' of the wrong type");
        }
        if (!check(field)) throw Error(std::string("has an invalid '") + name + "'");
    };
    // Whole numbers must be JSON integers that fit: converting 2e130 (or 2.5) to an integer would
    // be undefined or silently wrong.
    auto whole = [](const nlohmann::json& v) {
        return v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX));
    };
    for (const char* name : {"input_shape", "resize"}) {
        if (!j.contains(name) || j[name].is_null()) continue;
        const nlohmann::json& v = j[name];
        const bool ok = v.is_array() ? std::all_of(v.begin(), v.end(), whole) : whole(v);
        if (!ok) throw Error(std::string("has a '") + name + "' of the wrong type (whole numbers expected)");
    }
    key("input_shape", m.input_shape, [](const std::vector<int64_t>& v) {
        return v.size() == 3 && v[0] > 0 && v[1] > 0 && v[2] > 0;
    });
    auto finite = [](const std::vector<double>& v) {
        return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
    };
    key("mean", m.mean, finite);
    key("std", m.std, [&](const std::vector<double>& v) {
        return finite(v) && std::none_of(v.begin(), v.end(), [](double x) { return x == 0.0; });
    });
    key("resize", m.resize, [](int64_t v) { return v >= 0; });
    key("pixel_range", m.pixel_range, [](double v) { return v == 1.0 || v == 255.0; });
    key("bgr", m.bgr, [](bool) { return true; });
    key("class_names", m.class_names, [](const std::vector<std::string>&) { return true; });
    key("dataset", m.dataset, [](const std::string&) { return true; });
    return m;
}

void validate_model_meta(const Model& model) {
    const ModelMeta& m = model.meta();
    Preprocess p = m.preprocess();
    p.validate(model.input_shape()[0]);
    if (!m.class_names.empty()) {
        const int64_t k = model.num_classes();
        if (int64_t(m.class_names.size()) != k)
            throw Error("there are " + std::to_string(m.class_names.size()) + " class names (" +
                        (m.classes_source.empty() ? "metadata" : m.classes_source) +
                        ") but the model has " + std::to_string(k) +
                        " outputs: give one name per output, in output order");
    }
}

void save_model_with_meta(const std::string& model_path, const ModelMeta& meta,
                          const std::string& out_path) {
    // Load the module again from its file (not the runtime's eval-mode copy) so that it is
    // saved as it came, with every other extra file dropped but ours.
    torch::jit::Module module;
    try {
        module = torch::jit::load(model_path, c10::kCPU);
    } catch (const std::exception& e) {
        throw Error("cannot load '" + model_path + "' to annotate it: export it again with torch.jit.save");
    }
    torch::jit::ExtraFilesMap extra{{"convscope.json", json_text(model_meta_to_json(meta), 2)}};
    const fs::path out(out_path);
    if (out.has_parent_path()) fs::create_directories(out.parent_path());
    const std::string tmp = out_path + ".tmp";
    try {
        module.save(tmp, extra);
    } catch (const std::exception& e) {
        fs::remove(tmp);
        throw Error("cannot write the model to '" + out_path + "': check that the folder is writable");
    }
    fs::rename(tmp, out_path);
}

Preprocess preprocess_for(const Model& model, const Dataset& data) {
    return data.preprocess_for(model.input_shape(), model.meta().preprocess());
}

std::vector<std::string> input_warnings(const Model& model, const at::Tensor& images, const Preprocess& pre) {
    std::vector<std::string> out;
    if (pre.as_is || !images.defined() || images.size(0) == 0) return out;
    // The first convolution and a BatchNorm right after it (the next layer in order).
    const auto& layers = model.layers();
    size_t conv = layers.size();
    for (size_t i = 0; i < layers.size(); ++i)
        if (layers[i].is_conv) {
            conv = i;
            break;
        }
    if (conv + 1 >= layers.size()) return out;
    const LayerInfo& bn = layers[conv + 1];
    if (bn.type != "BatchNorm2d" || bn.output_shape != layers[conv].output_shape) return out;
    at::Tensor running_mean, running_var;
    for (const auto& item : model.module().named_modules()) {
        if (item.name != bn.name) continue;
        for (const auto& b : item.value.named_buffers(false)) {
            if (b.name == "running_mean") running_mean = b.value.to(torch::kFloat);
            if (b.name == "running_var") running_var = b.value.to(torch::kFloat);
        }
    }
    if (!running_mean.defined() || !running_var.defined()) return out;
    torch::NoGradGuard no_grad;
    const at::Tensor y = model.forward_until(images, {layers[conv].name}).taps.at(layers[conv].name);
    const at::Tensor flat = y.transpose(0, 1).flatten(1);  // [C, N*H*W]
    const at::Tensor mean = flat.mean(1), var = flat.var(1);
    const at::Tensor sd = running_var.clamp_min(1e-8).sqrt();
    const double mean_off = ((mean - running_mean).abs() / sd).median().item<double>();
    const at::Tensor log_ratio = (var.clamp_min(1e-12) / running_var.clamp_min(1e-12)).log();
    const double var_off = log_ratio.abs().median().item<double>();
    if (mean_off > 1.5 || var_off > std::log(4.0)) {
        char buf[200];
        std::snprintf(buf, sizeof buf,
                      "a typical channel's variance is %.3g times and its mean %.2g standard "
                      "deviations away from training's",
                      std::exp(log_ratio.median().item<double>()), mean_off);
        out.push_back("the inputs do not look like the ones '" + layers[conv].name +
                      "' was trained on (" + buf + ", from the statistics of '" + bn.name +
                      "') with the preprocessing " + pre.describe() +
                      ": give the model's preprocessing with --preprocess imagenet, or --mean/--std/--resize/--crop "
                      "(or store it with convscope annotate)");
    }
    return out;
}

// --- Preprocess ------------------------------------------------------------------------------

namespace {

// Per-channel values [1,C,1,1] from a list of size C or 1 (empty = fallback).
at::Tensor channel_tensor(const std::vector<double>& v, int64_t c, double fallback) {
    std::vector<float> out(static_cast<size_t>(c), float(fallback));
    for (int64_t i = 0; i < c; ++i) {
        if (v.size() == size_t(c)) out[size_t(i)] = float(v[size_t(i)]);
        else if (v.size() == 1) out[size_t(i)] = float(v[0]);
    }
    return torch::tensor(out).view({1, c, 1, 1});
}

std::string values_text(const std::vector<double>& v) {
    std::string out;
    for (size_t i = 0; i < v.size(); ++i) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.6g", v[i]);
        out += (i ? "," : "") + std::string(buf);
    }
    return out;
}

}  // namespace

void Preprocess::validate(int64_t channels) const {
    if (as_is) return;
    auto check = [&](const std::vector<double>& v, const char* option) {
        if (!v.empty() && v.size() != 1 && int64_t(v.size()) != channels)
            throw Error(std::string("--") + option + " has " + std::to_string(v.size()) +
                        " values but the model's input has " + std::to_string(channels) +
                        " channels: give one value per channel (or one for all)");
        for (double x : v)
            if (!std::isfinite(x))
                throw Error(std::string("--") + option + " holds a value that is not a finite number");
    };
    check(mean, "mean");
    check(std, "std");
    for (double s : std)
        if (s == 0.0) throw Error("--std holds 0: normalisation would divide by zero; give the std of each channel");
    if (!(pixel_range == 1.0 || pixel_range == 255.0))
        throw Error("the pixel range must be 0-1 or 0-255 (--pixel-range)");
    if (resize < 0) throw Error("--resize must be a positive number of pixels (the shorter side)");
}

at::Tensor Preprocess::normalise(const at::Tensor& pixels) const {
    if (as_is) return pixels;
    const int64_t c = pixels.size(1);
    at::Tensor x = pixels;
    if (bgr && c == 3) x = x.flip({1});
    if (pixel_range != 1.0) x = x * pixel_range;
    if (!mean.empty()) x = x - channel_tensor(mean, c, 0.0);
    if (!std.empty()) x = x / channel_tensor(std, c, 1.0);
    return x;
}

at::Tensor Preprocess::to_display(const at::Tensor& images_nchw) const {
    if (images_nchw.dim() != 4) {
        throw Error("to_display needs images [N,C,H,W]; got " +
                    detail::shape_str(images_nchw.sizes().vec()));
    }
    const int64_t c = images_nchw.size(1);
    if (c != 1 && c != 3) {
        throw Error("cannot show images with " + std::to_string(c) +
                    " channels as pictures: only 1 (gray) or 3 (RGB) channels can be shown");
    }
    at::Tensor x = images_nchw.detach().to(torch::kCPU, torch::kFloat);
    const at::Tensor finite = torch::isfinite(x);
    const bool all_finite = finite.all().item<bool>();
    if (as_is) {
        // Inputs of unknown scale: stretch each image's own range (of its finite values) to [0,1].
        const double inf = std::numeric_limits<double>::infinity();
        at::Tensor lo = torch::where(finite, x, torch::full_like(x, inf)).amin({1, 2, 3}, true);
        at::Tensor hi = torch::where(finite, x, torch::full_like(x, -inf)).amax({1, 2, 3}, true);
        at::Tensor range = hi - lo;
        x = torch::where(range > 0, (x - lo) / range.clamp_min(1e-12), torch::zeros_like(x));
    } else {
        if (!std.empty()) x = x * channel_tensor(std, c, 1.0);
        if (!mean.empty()) x = x + channel_tensor(mean, c, 0.0);
        if (pixel_range != 1.0) x = x / pixel_range;
        if (bgr && c == 3) x = x.flip({1});
    }
    x = torch::where(finite, x, torch::zeros_like(x)).clamp(0.0, 1.0).mul(255.0).round();
    at::Tensor out = x.to(torch::kByte).permute({0, 2, 3, 1}).contiguous();
    if (all_finite) return out;
    // Pixels with a NaN or infinite value in any channel are painted kNonFiniteColour (RGB order
    // here), so gray pictures come back with 3 channels.
    if (c == 1) out = out.expand({-1, -1, -1, 3}).contiguous();
    const at::Tensor bad = (~finite).any(1).unsqueeze(-1);  // [N,H,W,1]
    const at::Tensor colour = torch::tensor({255, 0, 255}, torch::kByte).view({1, 1, 1, 3});
    return torch::where(bad, colour, out).contiguous();
}

std::string Preprocess::describe() const {
    if (as_is) return "none: float32 .npy data is used as is";
    std::vector<std::string> steps;
    if (input_shape.size() == 3) {
        const std::string hw = std::to_string(input_shape[1]) + "x" + std::to_string(input_shape[2]);
        if (resize > 0) {
            steps.push_back("resize the shorter side to " + std::to_string(resize));
            steps.push_back("centre crop " + hw);
        } else {
            steps.push_back("fit to " + hw);
        }
    }
    if (bgr) steps.push_back("BGR channel order");
    if (pixel_range != 1.0) steps.push_back("pixels 0-255");
    if (!mean.empty()) steps.push_back("mean " + values_text(mean));
    if (!std.empty()) steps.push_back("std " + values_text(std));
    if (mean.empty() && std.empty()) steps.push_back("no normalisation");
    std::string out;
    for (size_t i = 0; i < steps.size(); ++i) out += (i ? ", " : "") + steps[i];
    if (!source.empty()) out += " (" + source + ")";
    return out;
}

nlohmann::json to_json(const Preprocess& p) {
    nlohmann::json j = {{"input_shape", p.input_shape},
                        {"resize", p.resize},
                        {"crop", p.input_shape.size() == 3 ? nlohmann::json{p.input_shape[1], p.input_shape[2]}
                                                            : nlohmann::json(nullptr)},
                        {"pixel_range", p.pixel_range},
                        {"bgr", p.bgr},
                        {"mean", p.mean},
                        {"std", p.std},
                        {"as_is", p.as_is},
                        {"source", p.source},
                        {"text", p.describe()}};
    return j;
}

}  // namespace convscope
