// convscope serve: the local web explorer. Pick, upload or draw an image and watch every layer's
// activations; click a channel for its filter, top-9 dataset patches, feature visualisation and
// overlay; occlusion and attributions on demand; the dataset map.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

#include "common.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/app/explorer.hpp"
#include "server.hpp"

namespace convscope::cli {
namespace {

struct ServeArgs {
    std::string host = "127.0.0.1";
    int port = 8080;
    std::string cache_dir;
    int64_t map_items = 10000;
    int map_iterations = 1000;
    std::string map_path;
    int64_t scan_items = 10000;
    int feature_vis_steps = 128;
    int workers = ExplorerOptions{}.workers;
    int64_t max_jobs = ExplorerOptions{}.max_queued_jobs;
    int64_t max_images = ExplorerOptions{}.max_images;
    double max_job_seconds = ExplorerOptions{}.max_job_seconds;
    int http_threads = server::ServerOptions{}.threads;
    int64_t max_body_mib = 4;
    int64_t max_connections = int64_t(server::ServerOptions{}.max_connections);
    double request_seconds = server::ServerOptions{}.request_seconds;
    double idle_seconds = server::ServerOptions{}.idle_seconds;
};

bool is_loopback(const std::string& host) {
    return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    auto a = std::make_shared<ServeArgs>();
    add_model_options(app, *o);
    app.add_option("--data", o->data, "data to browse, scan and map (default: fashion-mnist:test)");
    app.add_option("--labels", o->labels, "labels .npy for .npy data");
    app.add_option("--host", a->host,
                   "address to listen on; anything but loopback exposes the explorer to the network")
        ->capture_default_str();
    app.add_option("--port", a->port, "port (0 = any free port)")->capture_default_str()->check(CLI::Range(0, 65535));
    app.add_option("--cache-dir", a->cache_dir,
                   "folder for the cached patch scans and dataset maps (default: convscope's cache folder)");
    app.add_option("--map-items", a->map_items, "items on the dataset map (the first N, at most 70000)")
        ->capture_default_str();
    app.add_option("--map", a->map_path,
                   "show this convscope embed output folder as the dataset map instead of computing one "
                   "(any number of points, a million and more; made from the same --data)");
    app.add_option("--map-iterations", a->map_iterations, "t-SNE iterations of the dataset map")->capture_default_str();
    app.add_option("--scan-items", a->scan_items, "items scanned for each channel's top-9 patches (the first N)")
        ->capture_default_str();
    app.add_option("--feature-vis-steps", a->feature_vis_steps, "optimisation steps of a feature visualisation")
        ->capture_default_str();
    app.add_option("--workers", a->workers, "background jobs that run at once")->capture_default_str();
    app.add_option("--max-jobs", a->max_jobs, "jobs waiting for a worker; more are answered 429 with Retry-After")
        ->capture_default_str();
    app.add_option("--max-job-seconds", a->max_job_seconds, "a job running longer is stopped with an error (0 = no limit)")
        ->capture_default_str();
    app.add_option("--max-images", a->max_images, "uploaded or drawn images kept (the least recently used forgotten)")
        ->capture_default_str();
    app.add_option("--http-threads", a->http_threads, "threads answering requests")->capture_default_str();
    app.add_option("--max-body-mib", a->max_body_mib, "largest request body in MiB (larger: HTTP 413)")
        ->capture_default_str();
    app.add_option("--max-connections", a->max_connections, "connections open at once (more: HTTP 503)")
        ->capture_default_str();
    app.add_option("--request-seconds", a->request_seconds,
                   "time a client has to send a whole request (slower: HTTP 408)")
        ->capture_default_str();
    app.add_option("--idle-seconds", a->idle_seconds, "an open connection without a request this long is closed")
        ->capture_default_str();

    return [o, a]() {
        if (a->http_threads < 1 || a->http_threads > 256) throw UsageError("--http-threads must be 1..256");
        if (a->max_body_mib < 1 || a->max_body_mib > 1024) throw UsageError("--max-body-mib must be 1..1024");
        if (a->max_connections < 1 || a->max_connections > 100000)
            throw UsageError("--max-connections must be 1..100000");
        if (!(a->request_seconds > 0) || !(a->request_seconds <= 86400))
            throw UsageError("--request-seconds must be more than 0 and at most 86400");
        if (!(a->idle_seconds > 0) || !(a->idle_seconds <= 86400))
            throw UsageError("--idle-seconds must be more than 0 and at most 86400");
        ExplorerOptions eo;
        eo.cache_dir = a->cache_dir;
        eo.map_items = a->map_items;
        eo.map_iterations = a->map_iterations;
        eo.map_path = a->map_path;
        eo.scan_items = a->scan_items;
        eo.feature_vis_steps = a->feature_vis_steps;
        eo.workers = a->workers;
        eo.max_queued_jobs = a->max_jobs;
        eo.max_images = a->max_images;
        eo.max_job_seconds = a->max_job_seconds;
        eo.seed = o->seed;

        // SIGINT/SIGTERM are taken by one thread (sigwait) that stops the server; block them in
        // every other thread, which all start after this point.
        sigset_t signals;
        sigemptyset(&signals);
        sigaddset(&signals, SIGINT);
        sigaddset(&signals, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &signals, nullptr);

        Model model = open_model(*o);
        Dataset data = open_data(*o);
        fit_model_to_data(model, data);
        Explorer explorer(std::move(model), std::move(data), eo);

        server::ServerOptions so;
        so.host = a->host;
        so.port = a->port;
        so.threads = a->http_threads;
        so.max_body_bytes = size_t(a->max_body_mib) << 20;
        so.max_connections = size_t(a->max_connections);
        so.request_seconds = a->request_seconds;
        so.idle_seconds = a->idle_seconds;
        server::WebServer web(explorer, so);
        if (!is_loopback(a->host))
            std::cerr << "convscope: warning: listening on " << a->host
                      << ", not loopback: anyone who can reach this machine can use the explorer "
                         "and its model and data\n";
        const int port = web.bind();
        std::cout << "convscope: serving " << explorer.model().path() << " with " << explorer.data().spec()
                  << " on http://" << (a->host.find(':') != std::string::npos ? "[" + a->host + "]" : a->host)
                  << ":" << port << "/" << std::endl;

        // The waiter is joined before `web` is destroyed: a detached one could still be inside
        // web.stop() while the main thread tears the server down. If serve() ends without a
        // signal (an error), the waiter is woken with one.
        std::atomic<bool> signalled{false};
        std::thread waiter([&web, &signalled, signals]() {
            int sig = 0;
            sigwait(&signals, &sig);
            signalled = true;
            web.stop();
        });
        struct JoinWaiter {
            std::thread& t;
            std::atomic<bool>& signalled;
            ~JoinWaiter() {
                if (!signalled) pthread_kill(t.native_handle(), SIGTERM);
                t.join();
            }
        } join_waiter{waiter, signalled};
        web.serve();
        std::cerr << "convscope: server stopped\n";
        return 0;
    };
}

RegisterCommand reg({"serve", "the web explorer: live activations, channels, occlusion, attributions, dataset map",
                     setup, 90});

}  // namespace
}  // namespace convscope::cli
