// The explorer's HTTP requests: the bytes of one request (request line, query parameters,
// headers, body: job requests, images, drawings) answered as a connection's worker answers it,
// on the untrained built-in model and 16 random items. A reply must be HTTP with a 2xx or 4xx
// status; a 5xx (an internal error) is a finding. A started job is followed to its end: a job
// that fails with an internal error is a finding too.
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "convscope/app/explorer.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/io.hpp"
#include "fuzz_util.hpp"
#include "server.hpp"

namespace {

using nlohmann::json;

struct Fixture {
    std::unique_ptr<convscope::Explorer> explorer;
    std::unique_ptr<convscope::server::WebServer> server;
    Fixture() {
        torch::manual_seed(0);
        const uint8_t none = 0;
        const std::string path = convscope::fuzz::as_file(&none, 0, "items.npy");
        convscope::write_npy(path, torch::rand({16, 1, 28, 28}));
        convscope::ExplorerOptions eo;
        eo.cache_dir = convscope::fuzz::as_file(&none, 0, "cache-unused");  // a model in memory is never cached
        eo.map_items = 16;
        eo.map_iterations = 20;
        eo.scan_items = 16;
        eo.feature_vis_steps = 2;
        eo.max_images = 8;
        eo.workers = 1;
        eo.max_queued_jobs = 4;
        eo.max_job_seconds = 5;
        explorer = std::make_unique<convscope::Explorer>(convscope::untrained_default_model(0),
                                                         convscope::Dataset::open(path), eo);
        server = std::make_unique<convscope::server::WebServer>(*explorer, convscope::server::ServerOptions{});
    }
};

[[noreturn]] void finding(const std::string& what, const std::string& reply) {
    std::fprintf(stderr, "fuzz_server: %s\n%s\n", what.c_str(), reply.substr(0, 2000).c_str());
    std::abort();
}

int status_of(const std::string& reply) {
    if (reply.compare(0, 9, "HTTP/1.1 ") != 0 || reply.size() < 12) finding("the reply is not HTTP/1.1", reply);
    return std::atoi(reply.substr(9, 3).c_str());
}

std::string body_of(const std::string& reply) {
    const size_t p = reply.find("\r\n\r\n");
    return p == std::string::npos ? "" : reply.substr(p + 4);
}

// Follows a started job until it ends (each fixture job takes well under a second).
void follow_job(convscope::server::WebServer& server, const std::string& reply) {
    const json started = json::parse(body_of(reply), nullptr, false);
    if (!started.is_object() || !started.contains("id")) finding("a 202 reply without a job id", reply);
    const std::string id = started["id"].get<std::string>();
    for (int i = 0; i < 2000; ++i) {
        const std::string r = server.respond("GET /api/jobs/" + id + " HTTP/1.1\r\nHost: x\r\n\r\n");
        const int status = status_of(r);
        if (status == 404) return;  // forgotten already
        const json j = json::parse(body_of(r), nullptr, false);
        const std::string state = j.value("state", "");
        if (state == "error" && j.value("error_kind", "") == "internal") finding("a job failed with an internal error", r);
        if (state != "queued" && state != "running") return;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    finding("a job did not end within 10 s", reply);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static Fixture fx;
    const std::string request(reinterpret_cast<const char*>(data), size);
    const std::string reply = fx.server->respond(request);
    if (reply.empty()) return 0;  // nothing httplib could read as a request: the connection closes
    const int status = status_of(reply);
    if (status >= 500) finding("HTTP " + std::to_string(status), reply);
    if (status == 202) follow_job(*fx.server, reply);
    return 0;
}
