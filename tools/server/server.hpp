#pragma once
// The HTTP layer of `convscope serve`: maps routes to the Explorer (the library's back end) and
// serves the embedded web assets. No algorithm lives here. Handlers never throw: a
// convscope::Error becomes a 4xx JSON reply {"error": "..."}, anything else a 500 JSON reply.
// Connections are read and written by one event thread (connections.hpp): slow or idle clients
// never hold the threads that answer; httplib parses and routes the complete requests.
//
// Routes (all JSON unless noted):
//   GET  /, /app.js, /live.js, /inputs.js, /explain.js, /mapview.js, /app.css   the app's own embedded assets (nothing else)
//   GET  /api/model                           model_info()
//   GET  /api/dataset                         dataset_info()
//   GET  /api/items?start=S&count=N           items(S, N)
//   GET  /api/items/<i>.png                   item_png(i)                 (PNG)
//   GET  /api/images/<id>.png                 image_png(id): an input as the model sees it (PNG)
//   POST /api/activations[?layers=a,b&max_channels=&max_side=]   the live update. Body: PNG/JPEG
//        bytes (Content-Type image/*), or JSON {"index": i} | {"image": id} | {"png": base64} |
//        {"gray": base64, "width": W, "height": H}
//   GET  /api/filter.png?layer=L&channel=c    filter_png                  (PNG)
//   GET  /api/overlay.png?image=I&layer=L&channel=c  overlay_png          (PNG)
//   POST /api/jobs                            start_job(body)
//   GET  /api/jobs/<id>                       job(id)
//   DELETE /api/jobs/<id>                     cancel_job(id)
//   GET  /api/map[?points=0]                  map_points(): with the points as JSON arrays, or without
//   GET  /api/map/points                      map_bytes(): float32 x[N], y[N], int32 labels[N], items[N] (little-endian)
#include <cstddef>
#include <memory>
#include <string>

namespace convscope {
class Explorer;
}

namespace convscope::server {

struct ServerOptions {
    std::string host = "127.0.0.1";
    int port = 8080;                          // 0 = any free port
    std::size_t max_body_bytes = 4u << 20;    // larger bodies get 413
    int threads = 16;                         // threads answering complete requests
    std::size_t max_connections = 256;        // open at once; more get 503
    double request_seconds = 30;              // to send a whole request; slower clients get 408
    double idle_seconds = 5;                  // an idle kept-alive connection is closed
};

class WebServer {
public:
    WebServer(Explorer& explorer, ServerOptions options);
    ~WebServer();
    // Binds the socket; returns the port (useful with port 0). Throws Error if it cannot.
    int bind();
    // Serves until stop() (blocking).
    void serve();
    void stop();
    // Answers one complete HTTP request given as bytes, as a worker does for a connection (for
    // tests and fuzzing; needs no socket). Returns the reply's bytes.
    std::string respond(const std::string& request);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace convscope::server
