// convscope train: trains the built-in CNN on Fashion-MNIST and saves it as TorchScript.
#include <filesystem>
#include "convscope/runtime/json.hpp"
#include <iomanip>
#include <iostream>

#include "common.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/error.hpp"

namespace convscope::cli {
namespace {

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    auto t = std::make_shared<TrainOptions>();
    auto save = std::make_shared<std::string>();
    auto force = std::make_shared<bool>(false);
    auto arch = std::make_shared<std::string>("classify");
    app.add_option("--arch", *arch,
                   "classify (the Fashion-MNIST classifier) or segment (a segmentation network on 64x64 scenes of "
                   "two or three Fashion-MNIST items, 11 classes with the background; default --epochs 3 "
                   "--batch-size 64; --train-limit and --test-limit count scenes: 12,000 and 1,000) or vit (a small "
                   "vision transformer, 4x4 patches and a class token; `--model vit` selects it; default --epochs 4)")
        ->capture_default_str();
    app.add_option("--save", *save, "where to write the model (default: the built-in model's cache file)");
    app.add_option("--epochs", t->epochs, "passes over the 60,000 training images")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--batch-size", t->batch_size, "images per step")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--lr", t->learning_rate, "Adam learning rate")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--train-limit", t->train_limit, "train on the first N images only (0 = all)");
    app.add_option("--test-limit", t->test_limit, "evaluate on the first N test images only (0 = all)");
    app.add_option("--threads", o->threads, "intra-op threads (default: all cores)");
    app.add_option("--seed", o->seed, "random seed");
    app.add_flag("--force", *force, "retrain even if the cached model exists");
    app.add_option("--out", o->out, "also write train.json and manifest.json here");
    add_json_option(app, *o);
    return [o, t, save, force, arch, &app]() {
        apply_threads(*o);
        t->seed = o->seed;
        if (*arch != "classify" && *arch != "segment" && *arch != "vit")
            throw UsageError("unknown --arch '" + *arch + "': use classify, segment or vit");
        const bool segment = *arch == "segment";
        const bool vit = *arch == "vit";
        if (vit) {
            if (app.count("--epochs") == 0) t->epochs = kVitEpochs;
            if (app.count("--lr") == 0) t->learning_rate = kVitLearningRate;
        }
        if (segment) {
            if (app.count("--epochs") == 0) t->epochs = 3;
            if (app.count("--batch-size") == 0) t->batch_size = 64;
        }
        const std::string path = !save->empty() ? *save
                                 : segment      ? segment_model_path()
                                 : vit          ? vit_model_path()
                                                : default_model_path();
        nlohmann::json summary;
        if (save->empty() && !*force && std::filesystem::exists(path)) {
            Model m = Model::load(path);
            std::cerr << "convscope: the built-in " << (segment ? "segmentation " : vit ? "ViT " : "")
                      << "model is already trained (" << path
                      << "); use --force to train again\n";
            summary = {{"path", path}, {"cached", true}, {"arch", *arch}};
        } else {
            auto r = segment ? train_segment_model(path, *t, cli_progress("training"))
                     : vit   ? train_vit_model(path, *t, cli_progress("training"))
                             : train_default_model(path, *t, cli_progress("training"));
            summary = {{"path", r.path}, {"cached", false}, {"arch", *arch}, {"seconds", r.seconds},
                       {"epochs", r.epochs}, {"seed", o->seed}};
            if (segment) {
                summary["mean_iou"] = r.mean_iou;
                summary["pixel_accuracy"] = r.test_accuracy;
            } else {
                summary["test_accuracy"] = r.test_accuracy;
            }
            if (!o->json && segment)
                std::cout << "trained " << r.path << ": mean IoU " << std::fixed << std::setprecision(3) << r.mean_iou
                          << " on held-out scenes (pixel accuracy " << std::setprecision(2) << 100.0 * r.test_accuracy
                          << "%) in " << std::setprecision(0) << r.seconds << " s\n";
            else if (!o->json)
                std::cout << "trained " << r.path << ": test accuracy " << std::fixed << std::setprecision(2)
                          << 100.0 * r.test_accuracy << "% in " << std::setprecision(0) << r.seconds << " s\n";
        }
        if (!o->out.empty()) {
            Model m = Model::load(path);
            OutputDir dir(o->out);
            dir.set_command(command_line(), {{"arch", *arch}, {"epochs", t->epochs}, {"batch_size", t->batch_size},
                                             {"lr", t->learning_rate}, {"seed", o->seed}},
                            path, m.file_hash());
            write_json(dir.file("train.json", "training summary: model path, test accuracy, time"), summary);
            dir.write_manifest();
        }
        if (o->json) std::cout << json_text(summary, 2) << "\n";
        return 0;
    };
}

RegisterCommand reg({"train", "train a built-in model on Fashion-MNIST: the classifier, (--arch segment) a segmentation network or (--arch vit) a vision transformer (cached for later runs)", setup, 5});

}  // namespace
}  // namespace convscope::cli
