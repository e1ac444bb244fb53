// The HTTP layer of `convscope serve` (cpp-httplib). Routes call the Explorer; errors become JSON.
#include "server.hpp"
#include "convscope/runtime/json.hpp"

#include "connections.hpp"

#include <httplib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <c10/util/Exception.h>

#include <nlohmann/json.hpp>

#include "convscope/runtime/error.hpp"
#include "convscope/app/explorer.hpp"
#include "convscope/runtime/strings.hpp"
#include "convscope/runtime/base64.hpp"
#include "convscope/app/web_assets.hpp"

namespace convscope::server {

using nlohmann::json;

namespace {

void send_json(httplib::Response& res, const json& j, int status = 200) {
    res.status = status;
    res.set_header("Cache-Control", "no-store");
    res.set_content(json_text(j), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message) {
    send_json(res, json{{"error", message}}, status);
}

void send_png(httplib::Response& res, const std::string& png, bool cacheable) {
    res.status = 200;
    res.set_header("Cache-Control", cacheable ? "max-age=3600" : "no-store");
    res.set_content(png, "image/png");
}

// Every handler runs inside this: nothing escapes to httplib.
httplib::Server::Handler guarded(std::function<void(const httplib::Request&, httplib::Response&)> f) {
    return [f = std::move(f)](const httplib::Request& req, httplib::Response& res) {
        try {
            f(req, res);
        } catch (const NotFoundError& e) {
            send_error(res, 404, e.what());
        } catch (const UnsupportedMediaError& e) {
            send_error(res, 415, e.what());
        } catch (const TooLargeError& e) {
            send_error(res, 413, e.what());
        } catch (const BusyError& e) {
            res.set_header("Retry-After", std::to_string(e.retry_after_seconds));
            send_error(res, 429, e.what());
        } catch (const json::exception& e) {
            send_error(res, 400, std::string("bad JSON in the request: ") + e.what());
        } catch (...) {
            const ErrorReport e = current_error();
            switch (e.kind) {
            case ErrorKind::Cancelled: send_error(res, 409, e.message); break;
            case ErrorKind::Usage:
            case ErrorKind::Input: send_error(res, 400, e.message); break;  // a bad request
            case ErrorKind::Internal: send_error(res, 500, "internal error: " + e.message); break;
            default: send_error(res, 500, e.message); break;
            }
        }
    };
}

int64_t int_param(const httplib::Request& req, const std::string& name, int64_t fallback,
                  bool required = false) {
    if (!req.has_param(name.c_str())) {
        if (required) throw Error("the request needs the parameter '" + name + "' (an integer)");
        return fallback;
    }
    const std::string v = req.get_param_value(name.c_str());
    int64_t x = 0;
    if (!detail::parse_int64(v, x))
        throw Error("the parameter '" + name + "' must be an integer, got '" + v + "'");
    return x;
}

std::string string_param(const httplib::Request& req, const std::string& name) {
    if (!req.has_param(name.c_str())) throw Error("the request needs the parameter '" + name + "'");
    return req.get_param_value(name.c_str());
}

int64_t path_index(const std::string& s) {
    int64_t v = 0;
    if (!detail::parse_int64(s, v))
        throw NotFoundError("item '" + s + "' does not exist: items are named by their index");
    return v;
}

bool starts_with(const std::string& s, const std::string& prefix) {
    return s.compare(0, prefix.size(), prefix) == 0;
}

// The image a live-update request names or carries, stored in the explorer; returns its id.
std::string image_of_request(Explorer& ex, const httplib::Request& req) {
    const std::string type = req.get_header_value("Content-Type");
    if (req.body.empty()) throw Error("the request has no body: send an image or JSON");
    if (starts_with(type, "image/") || starts_with(type, "application/octet-stream"))
        return ex.add_encoded_image(req.body);
    if (!starts_with(type, "application/json") && req.body[0] != '{')
        return ex.add_encoded_image(req.body);  // 415 unless it is an image after all
    json j;
    try {
        j = json::parse(req.body);
    } catch (const json::parse_error& e) {
        throw Error(std::string("malformed JSON: ") + e.what());
    }
    if (!j.is_object())
        throw Error("the body must be a JSON object: {\"index\": i}, {\"image\": id}, {\"png\": base64} "
                    "or {\"gray\": base64, \"width\": W, \"height\": H}");
    if (j.contains("index")) {
        if (!j["index"].is_number_integer()) throw Error("\"index\" must be an integer");
        return ex.add_dataset_image(j["index"].get<int64_t>());
    }
    if (j.contains("image")) {
        if (!j["image"].is_string()) throw Error("\"image\" must be a string id");
        const std::string id = j["image"].get<std::string>();
        (void)ex.image_input(id);  // 404 if unknown
        return id;
    }
    if (j.contains("png")) {
        if (!j["png"].is_string()) throw Error("\"png\" must be a base64 string");
        std::string b64 = j["png"].get<std::string>();
        const auto comma = b64.find(',');
        if (starts_with(b64, "data:") && comma != std::string::npos) b64 = b64.substr(comma + 1);
        return ex.add_encoded_image(detail::base64_decode(b64));
    }
    if (j.contains("gray")) {
        if (!j["gray"].is_string() || !j.value("width", json()).is_number_integer() ||
            !j.value("height", json()).is_number_integer())
            throw Error("a drawing needs \"gray\" (base64 bytes) and integer \"width\" and \"height\"");
        return ex.add_gray_image(detail::base64_decode(j["gray"].get<std::string>()),
                                 j["height"].get<int64_t>(), j["width"].get<int64_t>());
    }
    throw Error("the body names no image: send {\"index\": i}, {\"image\": id}, {\"png\": base64} or "
                "{\"gray\": base64, \"width\": W, \"height\": H}");
}

std::vector<std::string> split_list(const std::string& s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= s.size()) {
        const size_t comma = s.find(',', start);
        const std::string part = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!part.empty()) out.push_back(part);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

const char* kAppCsp =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

// A complete request in memory, as httplib reads it; the reply collects in `out`.
class MemoryStream : public httplib::Stream {
public:
    explicit MemoryStream(const RawRequest& r) : r_(r) {}
    bool is_readable() const override { return pos_ < r_.bytes.size(); }
    bool is_writable() const override { return true; }
    ssize_t read(char* ptr, size_t size) override {
        const size_t n = std::min(size, r_.bytes.size() - pos_);
        std::memcpy(ptr, r_.bytes.data() + pos_, n);
        pos_ += n;
        return ssize_t(n);
    }
    ssize_t write(const char* ptr, size_t size) override {
        out.append(ptr, size);
        return ssize_t(size);
    }
    void get_remote_ip_and_port(std::string& ip, int& port) const override {
        ip = r_.remote_ip;
        port = r_.remote_port;
    }
    void get_local_ip_and_port(std::string& ip, int& port) const override {
        ip = r_.local_ip;
        port = r_.local_port;
    }
    socket_t socket() const override { return INVALID_SOCKET; }
    std::string out;

private:
    const RawRequest& r_;
    size_t pos_ = 0;
};

// httplib accepts; the connections layer reads, writes and times out; httplib parses and routes.
class Listener : public httplib::Server {
public:
    Connections* connections = nullptr;
    // httplib listens with a backlog of 5 connections: a burst of clients (a browser opening
    // several connections while others poll) overflows it and the kernel drops or resets
    // connections. Linux lets a second listen() on the bound socket raise the backlog.
    void widen_backlog(int backlog) {
        const socket_t sock = svr_sock_;
        if (sock != INVALID_SOCKET) ::listen(sock, backlog);
    }
    std::string answer(const RawRequest& r, bool& close) {
        MemoryStream s(r);
        bool closed = false;
        process_request(s, r.last, closed, nullptr);
        close = closed || r.last;
        return std::move(s.out);
    }

private:
    // Runs on the accepting thread (InlineQueue): hands the socket over and returns at once.
    bool process_and_close_socket(socket_t sock) override {
        if (connections) connections->add(sock);
        else ::close(sock);
        return true;
    }
};

// httplib's accept loop runs each accepted socket's task here, on its own thread.
class InlineQueue : public httplib::TaskQueue {
public:
    void enqueue(std::function<void()> fn) override { fn(); }
    void shutdown() override {}
};

}  // namespace

struct WebServer::Impl {
    Explorer& ex;
    ServerOptions opts;
    Listener svr;
    std::unique_ptr<Connections> connections;  // destroyed first: its workers call svr
    Impl(Explorer& e, ServerOptions o) : ex(e), opts(std::move(o)) {}
    void routes();
};

void WebServer::Impl::routes() {
    svr.new_task_queue = [] { return new InlineQueue(); };
    svr.set_payload_max_length(opts.max_body_bytes);
    // What httplib writes in Keep-Alive headers; the connections layer enforces it.
    svr.set_keep_alive_timeout(std::max<time_t>(1, time_t(opts.idle_seconds)));
    svr.set_keep_alive_max_count(ConnectionOptions{}.max_requests);

    // Replies that httplib makes itself (no route, body too large) get a JSON body too.
    const size_t limit = opts.max_body_bytes;
    svr.set_error_handler(httplib::Server::HandlerWithResponse([limit](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        std::string message;
        switch (res.status) {
            case 404: message = "not found: " + req.path; break;
            case 413:
                message = "the request body is larger than the limit of " +
                          std::to_string(limit >> 20) + " MiB";
                break;
            case 414: message = "the request URI is too long"; break;
            default: message = "bad request (HTTP " + std::to_string(res.status) + ")"; break;
        }
        const int status = res.status;
        send_error(res, status, message);
        return httplib::Server::HandlerResponse::Handled;
    }));
    svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        send_error(res, 500, "internal error");
    });

    // --- the app's own assets ---
    auto asset = [](const std::string& name, httplib::Response& res) {
        const detail::WebAsset* a = detail::find_web_asset(name);
        // Only the app's files: report templates are not part of the app.
        if (!a || starts_with(name, "report")) throw NotFoundError("not found: /" + name);
        res.status = 200;
        res.set_header("Cache-Control", "no-cache");
        res.set_header("X-Content-Type-Options", "nosniff");
        if (name == "index.html") res.set_header("Content-Security-Policy", kAppCsp);
        res.set_content(std::string(reinterpret_cast<const char*>(a->data), a->size),
                        detail::web_asset_content_type(name).c_str());
    };
    svr.Get("/", guarded([asset](const httplib::Request&, httplib::Response& res) { asset("index.html", res); }));
    svr.Get(R"(/([A-Za-z0-9_-]+\.(?:js|css|html|svg)))",
            guarded([asset](const httplib::Request& req, httplib::Response& res) { asset(req.matches[1], res); }));

    // --- model and data ---
    Explorer& ex = this->ex;
    svr.Get("/api/model", guarded([&ex](const httplib::Request&, httplib::Response& res) {
                send_json(res, ex.model_info());
            }));
    svr.Get("/api/dataset", guarded([&ex](const httplib::Request&, httplib::Response& res) {
                send_json(res, ex.dataset_info());
            }));
    svr.Get("/api/items", guarded([&ex](const httplib::Request& req, httplib::Response& res) {
                send_json(res, ex.items(int_param(req, "start", 0), int_param(req, "count", 48)));
            }));
    svr.Get(R"(/api/items/([^/]+)\.png)", guarded([&ex](const httplib::Request& req, httplib::Response& res) {
                send_png(res, ex.item_png(path_index(req.matches[1])), true);
            }));

    svr.Get(R"(/api/images/([A-Za-z0-9]+)\.png)", guarded([&ex](const httplib::Request& req, httplib::Response& res) {
                send_png(res, ex.image_png(req.matches[1]), false);
            }));

    // --- the live update ---
    svr.Post("/api/activations", guarded([&ex](const httplib::Request& req, httplib::Response& res) {
                 LiveOptions lo;
                 if (req.has_param("layers")) lo.layers = split_list(req.get_param_value("layers"));
                 lo.max_channels = int_param(req, "max_channels", lo.max_channels);
                 lo.max_side = int_param(req, "max_side", lo.max_side);
                 const std::string id = image_of_request(ex, req);
                 send_json(res, ex.activations(id, lo));
             }));

    // --- a channel ---
    svr.Get("/api/filter.png", guarded([&ex](const httplib::Request& req, httplib::Response& res) {
                send_png(res, ex.filter_png(string_param(req, "layer"), int_param(req, "channel", 0, true)), true);
            }));
    svr.Get("/api/overlay.png", guarded([&ex](const httplib::Request& req, httplib::Response& res) {
                send_png(res,
                         ex.overlay_png(string_param(req, "image"), string_param(req, "layer"),
                                        int_param(req, "channel", 0, true)),
                         false);
            }));

    // --- jobs ---
    svr.Post("/api/jobs", guarded([&ex](const httplib::Request& req, httplib::Response& res) {
                 json j;
                 try {
                     j = json::parse(req.body);
                 } catch (const json::parse_error& e) {
                     throw Error(std::string("malformed JSON: ") + e.what());
                 }
                 send_json(res, ex.start_job(j), 202);
             }));
    svr.Get(R"(/api/jobs/([A-Za-z0-9]+))", guarded([&ex](const httplib::Request& req, httplib::Response& res) {
                send_json(res, ex.job(req.matches[1]));
            }));
    svr.Delete(R"(/api/jobs/([A-Za-z0-9]+))", guarded([&ex](const httplib::Request& req, httplib::Response& res) {
                   send_json(res, ex.cancel_job(req.matches[1]));
               }));
    svr.Get("/api/map", guarded([&ex](const httplib::Request& req, httplib::Response& res) {
                send_json(res, ex.map_points(int_param(req, "points", 1) != 0));
            }));
    svr.Get("/api/map/points", guarded([&ex](const httplib::Request&, httplib::Response& res) {
                res.status = 200;
                res.set_header("Cache-Control", "no-store");
                res.set_content(ex.map_bytes(), "application/octet-stream");
            }));
}

WebServer::WebServer(Explorer& explorer, ServerOptions options)
    : impl_(std::make_unique<Impl>(explorer, std::move(options))) {
    Impl& d = *impl_;
    d.routes();
    ConnectionOptions co;
    co.workers = d.opts.threads;
    co.max_connections = d.opts.max_connections;
    co.request_seconds = d.opts.request_seconds;
    co.idle_seconds = d.opts.idle_seconds;
    co.max_body_bytes = d.opts.max_body_bytes;
    Listener& svr = d.svr;
    d.connections = std::make_unique<Connections>(co, [&svr](const RawRequest& r, bool& close) {
        return svr.answer(r, close);
    });
    d.svr.connections = d.connections.get();
}

WebServer::~WebServer() {
    impl_->svr.stop();
    impl_->connections->shutdown();
}

std::string WebServer::respond(const std::string& request) {
    RawRequest r;
    r.bytes = request;
    r.remote_ip = r.local_ip = "127.0.0.1";
    bool close = false;
    return impl_->svr.answer(r, close);
}

int WebServer::bind() {
    Impl& d = *impl_;
    int port = d.opts.port;
    bool ok = false;
    if (port == 0) {
        port = d.svr.bind_to_any_port(d.opts.host);
        ok = port > 0;
    } else {
        ok = d.svr.bind_to_port(d.opts.host, port);
    }
    if (!ok)
        throw Error("cannot listen on " + d.opts.host + ":" + std::to_string(d.opts.port) +
                    ": the port is in use or the address is not local; choose another --port or --host");
    d.svr.widen_backlog(512);
    return port;
}

void WebServer::serve() { impl_->svr.listen_after_bind(); }

void WebServer::stop() {
    impl_->svr.stop();
    impl_->connections->shutdown();
}

}  // namespace convscope::server
