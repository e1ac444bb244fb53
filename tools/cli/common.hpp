#pragma once
// Shared pieces of the command line: the command registry, common options, and helpers that turn
// options into a model, a dataset, selected indices and an output folder. No algorithm lives here.
#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "convscope/methods/target.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/image_header.hpp"
#include "convscope/runtime/preprocess.hpp"
#include "convscope/runtime/progress.hpp"
#include "convscope/runtime/run_context.hpp"

namespace cv {
class Mat;
}

namespace convscope::cli {

// A command adds its options to its subcommand and returns the function that runs it after
// parsing (returning the exit code). Commands register themselves with a static RegisterCommand.
using RunFn = std::function<int()>;
struct CommandSpec {
    std::string name;
    std::string help;
    std::function<RunFn(CLI::App&)> setup;
    int order = 100;  // position in --help
};
std::vector<CommandSpec>& command_registry();
struct RegisterCommand {
    explicit RegisterCommand(CommandSpec spec);
};

// Options most commands share.
struct CommonOptions {
    std::string model;        // --model (empty = the built-in model)
    std::string input_shape;  // --input-shape C,H,W
    std::string grid;         // --grid HxW
    int threads = 0;          // --threads (0 = all cores)
    uint64_t seed = 0;        // --seed
    std::string out;          // --out DIR
    bool json = false;        // --json
    std::string data;         // --data
    std::string labels;       // --labels L.npy
    std::string indices;      // --indices a:b
    std::string index;        // --index i
    std::string image;        // --image P (shorthand for --data P)
    // The model's preprocessing and class names (preprocess.hpp), as given on the command line.
    std::string preprocess, mean, std, crop, pixel_range, classes;
    int64_t resize = -1;
    bool bgr = false;
    bool replace_bad_metadata = false;  // annotate: unreadable metadata is replaced, with a warning
    int64_t max_image_pixels = kDefaultMaxImagePixels;  // --max-image-pixels
    bool allow_nonfinite = false;                        // --allow-nonfinite
    std::string output;                                  // --output NAME|INDEX ("" = default)
};

// What a method explains (--target, --score, --region), as given; parsed by parse_target_args.
struct TargetArgs {
    std::string target = "pred", score = "logit", region;
};
// --target, --score and --region (documented once, in the README's "Targets").
void add_target_options(CLI::App& app, TargetArgs& a, const std::string& what = "whose score is explained");
// The target with its score and region; UsageError for bad syntax (a region mask is read here).
Target parse_target_args(const TargetArgs& a);
// A similarity target's reference as model input: an item of `data` (an index) or an image
// file, preprocessed as `pre` says for the data (an image file: fitted to the model as its
// own data). Other targets are left as they are. Throws Error for an index out of range.
void load_reference(Target& target, const Model& model, const Dataset& data, const Preprocess& pre);
// The same where there may be no data (nullptr: an index is a UsageError).
void load_reference(Target& target, const Model& model, const Dataset* data_or_null, const Preprocess& pre);

// --model, --input-shape, --output, --threads, --seed, --max-image-pixels, --allow-nonfinite and the
// preprocessing options (--preprocess,
// --mean, --std, --resize, --crop, --pixel-range, --bgr, --classes).
void add_model_options(CLI::App& app, CommonOptions& o);
void add_preprocess_options(CLI::App& app, CommonOptions& o);
// The preprocessing options as the library takes them; UsageError for bad syntax.
PreprocessOptions preprocess_options(const CommonOptions& o);
void add_data_options(CLI::App& app, CommonOptions& o);
void add_out_option(CLI::App& app, CommonOptions& o, const std::string& default_dir);
void add_json_option(CLI::App& app, CommonOptions& o);

// Sets LibTorch's intra-op threads from --threads (0 = all cores).
void apply_threads(const CommonOptions& o);

// SIGINT and SIGTERM. The first asks the running command to stop at its next progress report:
// the work throws Cancelled (a top-patches scan writes its checkpoint first), every file written
// so far is complete (io writes to a temporary name and renames), and main exits with 128 + the
// signal. A second signal ends the process at once.
void install_interrupt_handlers();
int interrupt_signal();  // the first signal received, 0 if none
// stderr_progress(label), which also stops the work once a signal has arrived. Every command's
// progress goes through this.
ProgressFn cli_progress(const std::string& label, double quiet_seconds = 2.0);
// The context a command runs its method with: --threads, --seed and a progress bar on stderr
// labelled `label`.
RunContext run_context(const CommonOptions& o, const std::string& label);
// The model from --model (or the built-in one, trained on first use), with --input-shape and
// the preprocessing options merged into its metadata.
Model open_model(const CommonOptions& o);
// The data from --data/--image (default: Fashion-MNIST's test split), with --labels.
Dataset open_data(const CommonOptions& o);
// Sets the model's input shape from the data when the model does not know it, checks the
// metadata against the model (class count, mean/std sizes), matches the data's labels to the
// model's classes, prints the preprocessing once and warns when a few inputs look wrong.
void fit_model_to_data(Model& model, Dataset& data);
// The preprocessing fit_model_to_data announced last (for the manifest), or null.
const Preprocess* announced_preprocess();
// Indices from --index / --indices, else `default_spec` (a slice like ":1" or ":").
std::vector<int64_t> selected_indices(const CommonOptions& o, const Dataset& data,
                                      const std::string& default_spec);
// What the per-input commands (activations, occlusion, attribute) start from: the model fitted
// to the data, the chosen items (--index / --indices / --image, default the first), their
// preprocessing, the preprocessed batch [N,C,H,W] and the items' labels (empty without labels).
struct SelectedInputs {
    Model model;
    Dataset data;
    std::vector<int64_t> indices;
    Preprocess pre;
    at::Tensor images;
    std::vector<int64_t> labels;
};
SelectedInputs open_selected_inputs(const CommonOptions& o);

// The process's command line (set by main).
std::string& command_line();
// For a model whose output is dense ([N,K,H,W], segmentation): per image
// `segmentation/<index>.png`, the input beside its predicted classes with the target's region
// outlined (as fixed from the clean image). Other models: nothing.
void write_segmentation_pictures(OutputDir& out, const Model& model, const Target& target, const at::Tensor& images,
                                 const at::Tensor& display_nhwc, const std::vector<int64_t>& indices);

// A map drawn over its image: (display [H,W,C] uint8, map [h,w]) -> the picture.
using MapPainter = std::function<cv::Mat(const at::Tensor& display_hwc, const at::Tensor& map_hw)>;
// For a similarity target: per image `similarity/<index>.png`, the image and the reference side
// by side, each painted with its map: the image's maps[i] (explaining its similarity with the
// reference) and reference_map(image i's input [1,C,H,W]), the reference's map explaining its
// similarity with the image (the same method with the roles swapped). Other targets: nothing.
void write_similarity_pictures(OutputDir& out, const Target& target, const Preprocess& pre, const at::Tensor& images,
                               const at::Tensor& maps, const std::vector<int64_t>& indices,
                               const std::function<at::Tensor(const at::Tensor&)>& reference_map,
                               const MapPainter& paint);

// An output folder for --out with the manifest's command, options and model.
// Under mpirun: every rank must have the same model file, data, items and command line; Error on
// every rank (naming the ranks that differ) before any work otherwise. Nothing with one rank.
void check_ranks_agree(const Model& model, const Dataset& data, const std::vector<int64_t>& indices);

OutputDir open_out(const CommonOptions& o, const nlohmann::json& options, const Model* model);

// Parses "a:b" / "a" into [a,b) for --filters-like options against a count; UsageError if bad.
std::vector<int64_t> parse_range(const std::string& spec, int64_t n, const std::string& what);
// Parses "1,28,28"-style shapes.
std::vector<int64_t> parse_shape(const std::string& spec, const std::string& what);

}  // namespace convscope::cli
