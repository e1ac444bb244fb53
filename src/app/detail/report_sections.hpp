#pragma once
// The report's sections, one member function each of the context they share: each adds its
// part of the page's data (and its pictures) to the document; write_report (src/app/report.cpp)
// runs them in order.
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "convscope/app/report.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/preprocess.hpp"
#include "convscope/runtime/progress.hpp"
#include "convscope/runtime/run_context.hpp"

namespace convscope {
struct DatasetMap;
}

namespace convscope::detail {

// The stages of a report and their shares of its progress.
const std::vector<std::pair<std::string, double>>& report_stages();

struct ReportContext {
    const Model& model;
    const Dataset& data;
    OutputDir& out;
    const ReportOptions& opts;
    const ReportPlan& plan;
    const Preprocess pre;                        // the model's preprocessing for the data
    const std::vector<std::string> class_names;  // the model's, else the data's
    const int factor;                            // input pixels -> picture pixels
    const bool labels_comparable;                // the data's labels are the model's classes
    StagedProgress& stages;
    ReportResult& result;
    nlohmann::json& doc;  // the page's data
    std::shared_ptr<const DatasetMap> given_map = nullptr;  // read from ReportOptions::map_path

    // Writes a picture into img/ and returns its path relative to index.html.
    std::string put(const std::string& rel, const std::string& meaning, const cv::Mat& img);
    // Records a section (or part) left out, with the reason.
    void skip(const std::string& why);
    // A method's context for [lo, hi] of a stage: that share of the progress and the seed.
    RunContext context(const std::string& stage, double lo, double hi) const;

    // The sections, in the page's order (src/app/report_sections.cpp).
    void write_header();       // title, model, data, preprocessing, plan, layer table
    void write_accuracy();     // accuracy, and the correct and wrong examples to show
    void write_filters();      // filter grids
    void write_examples();     // inputs, activation maps, occlusion, gradient attributions
    void write_trust();        // which map to trust: the methods' evaluation
    void write_patches();      // top-9 dataset patches
    void write_feature_vis();  // feature visualisations
    void write_map();          // the t-SNE dataset map (src/app/report_map.cpp)

    // Parts of write_map: a map made earlier (ReportOptions::map_path); thumbnail sheets of the
    // items on the map (what the page loads on hover); the points and pictures of a map.
    using ThumbsOf = std::function<std::vector<cv::Mat>(const std::vector<int64_t>& items)>;
    void write_map_from_file();
    nlohmann::json write_map_sheets(const std::vector<int32_t>& items, int thumb_px, const ThumbsOf& thumbs_of,
                                    double lo, double hi);
    void write_map_data(const DatasetMap& m, nlohmann::json& map, const std::vector<cv::Mat>& sample_thumbs,
                        const std::vector<int64_t>& sample);
};

}  // namespace convscope::detail
