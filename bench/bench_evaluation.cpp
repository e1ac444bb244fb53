// Cost of the evaluation metrics against the model evaluations they need, measured in the same
// run: each metric's wall time divided by the time of the same number of forward passes (or, for
// the checks that recompute maps, of the same number of maps) at the batch size that runs
// fastest here. Target: at most 1.25x per metric. With --suite, also the whole of `convscope
// evaluate`'s deletion and insertion (100 steps) for --items items and the seven default
// methods, maps included (target on the default model, 100 items: under 60 s on 2 cores).
// Usage: bench_evaluation MODEL.pt [--items N] [--runs R] [--threads T] [--steps S] [--suite]
//        [--only TEXT] (the metrics whose name holds TEXT) [--own-forward] (forward passes by
//        the module's own forward instead of the inference copy; the first line compares them)
//        [--data fashion-mnist:test] [--batches] (only the cost per image of forward passes
//        and of saliency maps at each batch size, 8 to 256, and which allocator served them)
//        bench_evaluation --imputation [--runs R]: ROAD's imputation of one 3x224x224 image on one
//        thread, by each solver, for holes of several kinds (the choice of
//        ImputationSolver::Auto is fitted to these).
// MODEL.pt: the built-in model (~/.cache/convscope/default-fashion-mnist.pt) or
// resnet18_scripted.pt from tests/fixtures/make_fixtures.py (3x224x224).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "convscope/methods/evaluation.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/preprocess.hpp"
#include "convscope/runtime/run_context.hpp"

using namespace convscope;
using convscope::bench::interleaved;
using convscope::bench::median;
using convscope::bench::median_ratio;
using convscope::bench::seconds_of;

namespace {

// The batch size whose forward passes cost the least per image, of a few candidates.
int fastest_batch(const Model& model, const at::Tensor& one) {
    int best = 16;
    double best_t = 1e30;
    for (int b : {8, 16, 32, 64, 128, 256}) {
        const at::Tensor x = one.expand({b, one.size(1), one.size(2), one.size(3)}).contiguous();
        torch::NoGradGuard g;
        (void)model.forward(x);
        std::vector<double> ts;
        for (int r = 0; r < 3; ++r) ts.push_back(seconds_of([&] { (void)model.forward(x); }) / b);
        if (median(ts) < best_t) {
            best_t = median(ts);
            best = b;
        }
        if (b * one[0].numel() * 4 > (int64_t(256) << 20)) break;  // large inputs: stop at 256 MiB
    }
    return best;
}

// The cost per image of forward passes (the inference copy and the module's own) and of saliency
// maps (a forward and a backward pass) at each batch size, medians of `runs` interleaved rounds.
void batch_table(const Model& model, const at::Tensor& one, int runs) {
    Model own = model.copy();
    own.set_inference_copy(false);
    const Explainer saliency = method_explainer("saliency", ExplainOptions{});
    Target target;
    target.score = Score::Prob;
    std::printf("memory: %s\nbatch   copy ms   own ms   saliency ms   (per image)\n", memory_allocator());
    for (int b : {8, 16, 32, 64, 128, 256}) {
        const at::Tensor x = one.expand({b, one.size(1), one.size(2), one.size(3)}).contiguous();
        torch::NoGradGuard g;
        (void)model.forward(x);
        (void)own.forward(x);
        (void)saliency(model, x, target, {});
        const auto t = interleaved({[&] { (void)model.forward(x); }, [&] { (void)own.forward(x); },
                                    [&] { (void)saliency(model, x, target, {}); }},
                                   runs);
        std::printf("%5d %9.3f %8.3f %13.3f\n", b, 1e3 * median(t[0]) / b, 1e3 * median(t[1]) / b,
                    1e3 * median(t[2]) / b);
        std::fflush(stdout);
        if (b * one[0].numel() * 4 > (int64_t(256) << 20)) break;  // large inputs: stop at 256 MiB
    }
}

// `count` forward passes of perturbed-like copies of images, `batch` at a time.
void forwards(const Model& model, const at::Tensor& images, int64_t count, int batch) {
    torch::NoGradGuard g;
    const int64_t n = images.size(0);
    for (int64_t first = 0; first < count; first += batch) {
        const int64_t b = std::min<int64_t>(batch, count - first);
        const at::Tensor idx = torch::arange(first, first + b, torch::kLong).remainder(n);
        (void)model.forward_unchecked(images.index_select(0, idx) * 0.99f);
    }
}

// ROAD's imputation of one 3x224x224 image on one thread for holes of several kinds: discs,
// the top 50% and 90% of noise, of noise smoothed over 9 and over 41 pixels (maps of saliency,
// of a smooth method). The widest hole is the largest chessboard distance to a kept pixel.
int imputation_table(int runs) {
    at::set_num_threads(1);
    const int64_t h = 224, w = 224;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
    const at::Tensor x = torch::randn({1, 3, h, w}, gen, torch::kFloat);
    const at::Tensor yy = torch::arange(h).view({h, 1}).expand({h, w}), xx = torch::arange(w).view({1, w}).expand({h, w});
    const at::Tensor d2 = (yy - h / 2).pow(2) + (xx - w / 2).pow(2);
    const at::Tensor noise = torch::rand({h, w}, gen, torch::kFloat);
    const at::Tensor smooth9 = torch::avg_pool2d(torch::rand({1, 1, h + 8, w + 8}, gen, torch::kFloat), 9, 1)[0][0];
    const at::Tensor smooth41 = torch::avg_pool2d(torch::rand({1, 1, h + 40, w + 40}, gen, torch::kFloat), 41, 1)[0][0];
    const auto top = [](const at::Tensor& m, double share) {
        return m > std::get<0>(m.flatten().kthvalue(int64_t((1 - share) * double(m.numel()))));
    };
    const std::vector<std::pair<std::string, at::Tensor>> holes = {
        {"disc r=30", d2 < 900},          {"disc r=60", d2 < 3600},         {"disc r=100", d2 < 10000},
        {"noise 50%", top(noise, 0.5)},   {"noise 90%", top(noise, 0.9)},   {"smooth-9 50%", top(smooth9, 0.5)},
        {"smooth-9 90%", top(smooth9, 0.9)}, {"smooth-41 50%", top(smooth41, 0.5)}, {"smooth-41 90%", top(smooth41, 0.9)}};
    std::printf("one 3x224x224 image, 1 thread, median of %d runs\n", runs);
    std::printf("%-14s %8s %7s %12s %12s %12s %6s\n", "hole", "removed", "widest", "iterative ms", "factor. ms",
                "auto ms", "auto");
    for (const auto& hole : holes) {
        const std::string& name = hole.first;
        const at::Tensor& removed = hole.second;  // a plain reference: lambdas below capture it
        at::Tensor kept = removed.logical_not().to(torch::kFloat).view({1, 1, h, w});
        int widest = 0;
        while (kept.min().item<float>() < 0.5f) {
            kept = torch::max_pool2d(kept, 3, 1, 1);
            ++widest;
        }
        std::vector<double> ms[3];
        const ImputationSolver solvers[3] = {ImputationSolver::Iterative, ImputationSolver::Factorisation,
                                             ImputationSolver::Auto};
        at::Tensor out[3];
        for (int r = 0; r < runs; ++r)
            for (int k = 0; k < 3; ++k) {
                const double t = convscope::bench::seconds_of([&] {
                    out[k] = noisy_linear_imputation(x, removed.unsqueeze(0), 0.0, gen, solvers[k]);
                });
                ms[k].push_back(t * 1e3);
            }
        const double m0 = median(ms[0]), m1 = median(ms[1]), m2 = median(ms[2]);
        std::printf("%-14s %8lld %7d %12.1f %12.1f %12.1f %6s  (solvers differ by %.1e)\n", name.c_str(),
                    (long long)removed.sum().item<int64_t>(), widest, m0, m1, m2,
                    torch::equal(out[2], out[0]) ? "iter." : "factor.", (out[0] - out[1]).abs().max().item<double>());
    }
    return 0;
}

}  // namespace

int run(int argc, char** argv) {
    if (argc >= 2 && std::string(argv[1]) == "--imputation")
        return imputation_table(argc >= 4 && std::string(argv[2]) == "--runs" ? std::atoi(argv[3]) : 3);
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.pt [--items N] [--runs R] [--threads T] [--steps S] [--suite] [--data D] [--only TEXT] [--own-forward] [--batches]\n",
                     argv[0]);
        return 2;
    }
    int64_t items = 8;
    int runs = 3, threads = 2, steps = 100;
    bool suite = false, own_forward = false, batches = false;
    std::string data_spec, only;
    for (int i = 2; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--suite") {
            suite = true;
            continue;
        }
        if (flag == "--batches") {
            batches = true;
            continue;
        }
        if (flag == "--own-forward") {
            own_forward = true;
            continue;
        }
        if (i + 1 >= argc) break;
        const std::string v = argv[++i];
        if (flag == "--items") items = std::atoll(v.c_str());
        else if (flag == "--runs") runs = std::atoi(v.c_str());
        else if (flag == "--threads") threads = std::atoi(v.c_str());
        else if (flag == "--steps") steps = std::atoi(v.c_str());
        else if (flag == "--data") data_spec = v;
        else if (flag == "--only") only = v;
    }
    at::set_num_threads(threads);
    Model model = Model::load(argv[1]);
    if (!model.has_input_shape()) model.set_input_shape({3, 224, 224});
    const auto shape = model.input_shape();
    at::Tensor images;
    if (!data_spec.empty()) {
        const Dataset data = Dataset::open(data_spec);
        std::vector<int64_t> idx;
        for (int64_t i = 0; i < items; ++i) idx.push_back(i);
        images = data.batch(idx, preprocess_for(model, data));
    } else {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
        images = torch::randn({items, shape[0], shape[1], shape[2]}, gen, torch::kFloat);
    }
    if (batches) {
        batch_table(model, images.slice(0, 0, 1), runs);
        return 0;
    }
    // The inference copy against the module's own forward, at the batch that runs fastest for
    // the copy; --own-forward then runs everything with the module's own forward.
    const int copy_batch = fastest_batch(model, images.slice(0, 0, 1));
    {
        const int b = copy_batch;
        Model own = model.copy();
        own.set_inference_copy(false);
        (void)own.forward(images.slice(0, 0, 1).expand({b, shape[0], shape[1], shape[2]}).contiguous());
        const auto t = interleaved({[&] { forwards(model, images, 4 * b, b); }, [&] { forwards(own, images, 4 * b, b); }}, runs);
        std::printf("forward passes at batch %d: inference copy %.4f ms per image, own forward %.4f ms (%.2fx); %s\n", b,
                    1e3 * median(t[0]) / (4 * b), 1e3 * median(t[1]) / (4 * b), median_ratio(t[1], t[0]),
                    model.inference_note().c_str());
    }
    if (own_forward) model.set_inference_copy(false);
    const int batch = own_forward ? fastest_batch(model, images.slice(0, 0, 1)) : copy_batch;
    std::printf("%s, %lld items %lldx%lldx%lld, %d threads, fastest forward batch %d, %d interleaved rounds\n", argv[1],
                (long long)items, (long long)shape[0], (long long)shape[1], (long long)shape[2], threads, batch, runs);

    Target target;
    target.score = Score::Prob;
    const Explainer saliency = method_explainer("saliency", ExplainOptions{});
    const Explanation e = saliency(model, images, target, {});
    const Target fixed = fixed_target(target, e.targets);

    struct Case {
        std::string name;
        int64_t evaluations;  // forward passes it needs
        std::function<void()> run;
    };
    CurveOptions del;
    del.target = fixed;
    del.steps = steps;
    del.batch_size = batch;
    CurveOptions ins = del;
    ins.insertion = true;
    ins.baseline = Baseline{Baseline::Kind::Blur, 0};
    RoadOptions ro;
    ro.target = fixed;
    ro.batch_size = batch;
    InfidelityOptions io;
    io.target = fixed;
    io.batch_size = batch;
    const std::vector<Case> cases = {
        {"deletion MoRF (" + std::to_string(steps) + " steps)", items * (steps + 1),
         [&] { (void)perturbation_curve(model, images, e.map, del); }},
        {"insertion MoRF, blur baseline", items * (steps + 1), [&] { (void)perturbation_curve(model, images, e.map, ins); }},
        {"ROAD MoRF (9 percentages, imputation)", items * 9, [&] { (void)road(model, images, e.map, ro); }},
        {"infidelity (10 samples)", items * 11, [&] { (void)infidelity(model, images, e, io); }},
    };
    std::printf("%-40s %10s %10s %8s\n", "metric", "metric s", "forwards s", "ratio");
    for (const auto& c : cases) {
        if (c.name.find(only) == std::string::npos) continue;
        c.run();  // warm-up: graph specialisation
        std::function<void()> base = [&] { forwards(model, images, c.evaluations, batch); };
        base();
        const auto t = interleaved({c.run, base}, runs);
        std::printf("%-40s %10.3f %10.3f %7.2fx\n", c.name.c_str(), median(t[0]), median(t[1]), median_ratio(t[0], t[1]));
    }

    // ROAD's imputation alone, of the rows its MoRF run imputes (the top 10%..90% of each
    // saliency map removed), in batches of the fastest forward batch: on 1 thread and on all.
    if (std::string("ROAD").find(only) != std::string::npos) {
        const int64_t h = shape[1], w = shape[2];
        const at::Tensor rank = relevance_ranks(e.map, RelevanceOrder::MostFirst);
        std::vector<at::Tensor> rows, masks;
        for (int64_t pc = 10; pc <= 90; pc += 10) {
            rows.push_back(images);
            masks.push_back(rank.lt(pc * h * w / 100).view({items, h, w}));
        }
        const at::Tensor all_rows = torch::cat(rows), all_masks = torch::cat(masks);
        const auto impute_all = [&](double noise) {
            at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
            for (int64_t first = 0; first < all_rows.size(0); first += batch) {
                const int64_t end = std::min<int64_t>(first + batch, all_rows.size(0));
                (void)noisy_linear_imputation(all_rows.slice(0, first, end), all_masks.slice(0, first, end), noise, gen);
            }
        };
        for (const double noise : {0.01, 0.0}) {
            at::set_num_threads(1);
            const double one = median(interleaved({[&] { impute_all(noise); }}, runs)[0]);
            at::set_num_threads(threads);
            const double all = median(interleaved({[&] { impute_all(noise); }}, runs)[0]);
            std::printf("ROAD's imputation alone, noise %.2f, %lld rows: %.4f s on 1 thread, %.4f s on %d (%.1f us per row)\n",
                        noise, (long long)all_rows.size(0), one, all, threads, 1e6 * all / double(all_rows.size(0)));
        }
    }

    // Checks that recompute maps: against the same number of maps computed directly.
    SensitivityOptions so;
    so.samples = 4;
    RandomisationOptions rand;  // the whole cascade: every layer with parameters
    const std::vector<Case> map_cases = {
        {"max-sensitivity (4 samples), saliency", 4, [&] { (void)max_sensitivity(model, images, e, saliency, target, so); }},
        {"randomisation (" + std::to_string(parameter_layers(model).size()) + " layers), saliency",
         int64_t(parameter_layers(model).size()),
         [&] { (void)randomisation(model, images, e, saliency, target, rand); }},
        {"random-logit, saliency", 1, [&] { (void)random_logit(model, images, e, saliency, target); }},
    };
    for (const auto& c : map_cases) {
        if (c.name.find(only) == std::string::npos) continue;
        c.run();
        std::function<void()> base = [&] {
            for (int64_t k = 0; k < c.evaluations; ++k) (void)saliency(model, images * 0.99f, fixed, {});
        };
        base();
        const auto t = interleaved({c.run, base}, runs);
        std::printf("%-40s %10.3f %10.3f %7.2fx  (against %lld saliency maps)\n", c.name.c_str(), median(t[0]),
                    median(t[1]), median_ratio(t[0], t[1]), (long long)c.evaluations);
    }

    if (suite) {
        EvaluationOptions eo;
        eo.metrics = {Metric::Deletion, Metric::Insertion};
        eo.steps = steps;
        eo.batch_size = batch;
        eo.explain.target = target;
        EvaluationResult r;
        const double s = seconds_of([&] { r = evaluate(model, images, eo); });
        std::printf("evaluate: deletion + insertion (MoRF and LeRF, %d steps), %lld items, 7 methods, maps "
                    "included: %.1f s\n",
                    steps, (long long)items, s);
        for (const auto& m : r.methods) {
            double metric_s = 0;
            for (const auto& [k, v] : r.seconds.at(m))
                if (k != "map") metric_s += v;
            std::printf("  %-22s map %6.2f s, metrics %6.2f s\n", m.c_str(), r.seconds.at(m).at("map"), metric_s);
        }
    }
    return 0;
}

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_evaluation: %s\n", e.what());
        return 1;
    }
}
