// The server's connections on one epoll thread and a pool of workers (see connections.hpp).
#include "connections.hpp"
#include "convscope/runtime/json.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace convscope::server {

namespace {

std::string lower(std::string s) {
    for (auto& ch : s) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return s;
}

std::string trim(const std::string& s) {
    size_t a = 0, b = s.size();
    while (a < b && (s[a] == ' ' || s[a] == '\t')) ++a;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t' || s[b - 1] == '\r')) --b;
    return s.substr(a, b - a);
}

// The line that starts at `pos` without its "\r\n" or "\n"; `next` is where the following one starts.
bool next_line(const std::string& b, size_t pos, std::string& line, size_t& next) {
    const size_t nl = b.find('\n', pos);
    if (nl == std::string::npos) return false;
    size_t end = nl;
    if (end > pos && b[end - 1] == '\r') --end;
    line = b.substr(pos, end - pos);
    next = nl + 1;
    return true;
}

// A non-negative decimal or hexadecimal number without overflow past `limit`.
bool parse_size(const std::string& s, int base, uint64_t limit, uint64_t& out) {
    if (s.empty() || s.size() > 20) return false;
    uint64_t v = 0;
    for (char ch : s) {
        int d;
        if (ch >= '0' && ch <= '9') d = ch - '0';
        else if (base == 16 && ch >= 'a' && ch <= 'f') d = ch - 'a' + 10;
        else if (base == 16 && ch >= 'A' && ch <= 'F') d = ch - 'A' + 10;
        else return false;
        if (v > (limit - uint64_t(d)) / uint64_t(base)) {
            out = limit + 1;  // more than the limit (the caller reports it as too large)
            return true;
        }
        v = v * uint64_t(base) + uint64_t(d);
    }
    out = v;
    return true;
}

// Frames a chunked body that starts at `p`; fills f.end when it is complete.
void frame_chunked(const std::string& b, size_t p, size_t max_header, size_t max_body, Framing& f) {
    uint64_t total = 0;
    std::string line;
    size_t next = 0;
    for (;;) {
        if (!next_line(b, p, line, next)) {
            if (b.size() - p > 1024) f.state = Framing::Bad, f.why = "a chunk size line longer than 1 KiB";
            return;
        }
        const std::string hex = trim(line.substr(0, line.find(';')));
        uint64_t size = 0;
        if (!parse_size(hex, 16, max_body, size)) {
            f.state = Framing::Bad;
            f.why = "a chunk size that is not a hexadecimal number";
            return;
        }
        if (size == 0) break;
        total += size;
        if (total > max_body) {
            f.state = Framing::TooLarge;
            return;
        }
        const size_t data_end = next + size_t(size);
        if (b.size() < data_end + 2) {
            if (b.size() == data_end + 1 && b[data_end] == '\n') p = data_end + 1;
            else return;  // more to come
        } else if (b[data_end] == '\r' && b[data_end + 1] == '\n') {
            p = data_end + 2;
        } else if (b[data_end] == '\n') {
            p = data_end + 1;
        } else {
            f.state = Framing::Bad;
            f.why = "a chunk longer than its size";
            return;
        }
    }
    // Trailers until an empty line.
    p = next;
    for (;;) {
        if (!next_line(b, p, line, next)) {
            if (b.size() - p > max_header) f.state = Framing::HeadersTooLarge;
            return;
        }
        p = next;
        if (line.empty()) break;
    }
    f.state = Framing::Complete;
    f.end = p;
}

}  // namespace

Framing frame_request(const std::string& b, size_t max_header, size_t max_body) {
    Framing f;
    std::string line;
    size_t pos = 0, next = 0;
    if (!next_line(b, 0, line, next)) {
        if (b.size() > max_header) f.state = Framing::HeadersTooLarge;
        return f;
    }
    if (trim(line).empty()) {
        f.state = Framing::Bad;
        f.why = "an empty request line";
        return f;
    }
    bool chunked = false, has_length = false;
    uint64_t length = 0;
    for (pos = next;;) {
        if (!next_line(b, pos, line, next)) {
            if (b.size() > max_header) f.state = Framing::HeadersTooLarge;
            return f;
        }
        pos = next;
        if (pos > max_header) {
            f.state = Framing::HeadersTooLarge;
            return f;
        }
        if (line.empty()) break;
        const size_t colon = line.find(':');
        if (colon == std::string::npos) continue;  // httplib answers malformed headers itself
        const std::string name = lower(trim(line.substr(0, colon)));
        const std::string value = trim(line.substr(colon + 1));
        if (name == "content-length") {
            uint64_t v = 0;
            if (!parse_size(value, 10, max_body, v) || (has_length && v != length)) {
                f.state = Framing::Bad;
                f.why = "a Content-Length that is not one non-negative number";
                return f;
            }
            has_length = true;
            length = v;
        } else if (name == "transfer-encoding") {
            if (lower(value) != "chunked") {
                f.state = Framing::Bad;
                f.why = "a transfer encoding other than chunked";
                return f;
            }
            chunked = true;
        } else if (name == "expect" && lower(value) == "100-continue") {
            f.expect_continue = true;
        }
    }
    f.header_end = pos;
    if (chunked && has_length) {
        f.state = Framing::Bad;
        f.why = "both a Content-Length and a chunked transfer encoding";
        return f;
    }
    if (chunked) {
        frame_chunked(b, pos, max_header, max_body, f);
        return f;
    }
    if (length > max_body) {
        f.state = Framing::TooLarge;
        return f;
    }
    if (b.size() - pos >= length) {
        f.state = Framing::Complete;
        f.end = pos + size_t(length);
    }
    return f;
}

namespace {

std::string error_reply(int status, const char* reason, const std::string& message, int retry_after = 0) {
    const std::string body = json_text(nlohmann::json{{"error", message}});
    std::string r = "HTTP/1.1 " + std::to_string(status) + " " + reason +
                    "\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\nConnection: close\r\n";
    if (retry_after > 0) r += "Retry-After: " + std::to_string(retry_after) + "\r\n";
    return r + "\r\n" + body;
}

// The request without its Expect header: the connection layer has answered it already.
void strip_expect(std::string& req, size_t header_end) {
    std::string line;
    size_t pos = 0, next = 0;
    while (pos < header_end && next_line(req, pos, line, next)) {
        const size_t colon = line.find(':');
        if (pos > 0 && colon != std::string::npos && lower(trim(line.substr(0, colon))) == "expect") {
            req.erase(pos, next - pos);
            return;
        }
        pos = next;
    }
}

void address_of(int fd, bool peer, std::string& ip, int& port) {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    const int rc = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                        : ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    if (rc != 0) return;
    char buf[INET6_ADDRSTRLEN] = {0};
    if (addr.ss_family == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
        ::inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
        port = ntohs(a->sin_port);
    } else if (addr.ss_family == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
        ::inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
        port = ntohs(a->sin6_port);
    }
    ip = buf;
}

}  // namespace

struct Connections::Impl {
    using Clock = std::chrono::steady_clock;
    struct Conn {
        int fd = -1;
        enum State { Reading, Working, Writing } state = Reading;
        std::string in, out;
        size_t out_pos = 0;
        Clock::time_point since;  // Reading: the request's first byte (or the last reply); Writing: its start
        bool has_bytes = false;   // Reading: part of a request has arrived
        bool close_after = false, continue_sent = false;
        size_t served = 0;
        std::string remote_ip, local_ip;
        int remote_port = -1, local_port = -1;
    };

    ConnectionOptions o;
    RequestHandler handler;
    int ep = -1, wake_fd = -1;

    std::mutex m;  // guards the four below
    std::condition_variable cv;
    std::deque<std::pair<uint64_t, RawRequest>> work;
    std::vector<std::tuple<uint64_t, std::string, bool>> done;
    std::vector<int> pending;
    bool stopping = false;

    std::atomic<bool> stop_loop{false};
    std::once_flag shut;  // a second shutdown() waits until the first has joined the threads
    std::thread loop_thread;
    std::vector<std::thread> workers;

    // The event thread's own.
    std::unordered_map<uint64_t, Conn> conns;
    uint64_t next_id = 1;

    void wake() {
        const uint64_t one = 1;
        ssize_t rc = ::write(wake_fd, &one, sizeof one);
        (void)rc;
    }
    void watch(uint64_t id, Conn& c, uint32_t events) {
        epoll_event ev{};
        ev.events = events;
        ev.data.u64 = id;
        ::epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
    }
    void close(uint64_t id) {
        auto it = conns.find(id);
        if (it == conns.end()) return;
        ::epoll_ctl(ep, EPOLL_CTL_DEL, it->second.fd, nullptr);
        ::close(it->second.fd);
        conns.erase(it);
    }

    // Each returns false once the connection is closed (and gone from conns).
    bool flush(uint64_t id, Conn& c) {
        while (c.out_pos < c.out.size()) {
            const ssize_t n = ::send(c.fd, c.out.data() + c.out_pos, c.out.size() - c.out_pos, MSG_NOSIGNAL);
            if (n > 0) {
                c.out_pos += size_t(n);
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                watch(id, c, EPOLLOUT);
                return true;
            } else {
                close(id);
                return false;
            }
        }
        c.out.clear();
        c.out_pos = 0;
        if (c.close_after) {
            close(id);
            return false;
        }
        c.state = Conn::Reading;
        c.has_bytes = !c.in.empty();
        c.continue_sent = false;
        c.since = Clock::now();
        watch(id, c, EPOLLIN);
        return c.in.empty() || frame(id, c);  // a pipelined request may be waiting
    }
    bool reply(uint64_t id, Conn& c, std::string bytes, bool close_after) {
        c.state = Conn::Writing;
        c.out = std::move(bytes);
        c.out_pos = 0;
        c.close_after = close_after;
        c.since = Clock::now();
        return flush(id, c);
    }
    bool frame(uint64_t id, Conn& c) {
        const Framing f = frame_request(c.in, o.max_header_bytes, o.max_body_bytes);
        switch (f.state) {
        case Framing::Incomplete:
            // A chunked body's size lines and extensions may not multiply what is kept.
            if (c.in.size() > o.max_header_bytes + 2 * o.max_body_bytes + 65536)
                return reply(id, c, error_reply(413, "Payload Too Large", "the request is larger than the limit of " +
                                                    std::to_string(o.max_body_bytes >> 20) + " MiB"), true);
            if (f.expect_continue && !c.continue_sent) {
                static const char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
                ssize_t n = ::send(c.fd, kContinue, sizeof kContinue - 1, MSG_NOSIGNAL);
                (void)n;
                c.continue_sent = true;
            }
            return true;
        case Framing::TooLarge:
            return reply(id, c, error_reply(413, "Payload Too Large", "the request body is larger than the limit of " +
                                                std::to_string(o.max_body_bytes >> 20) + " MiB"), true);
        case Framing::HeadersTooLarge:
            return reply(id, c, error_reply(431, "Request Header Fields Too Large", "the request line and headers are larger than " +
                                                std::to_string(o.max_header_bytes >> 10) + " KiB"), true);
        case Framing::Bad:
            return reply(id, c, error_reply(400, "Bad Request", "malformed request: " + f.why), true);
        case Framing::Complete: break;
        }
        RawRequest r;
        r.bytes = c.in.substr(0, f.end);
        c.in.erase(0, f.end);
        if (f.expect_continue) strip_expect(r.bytes, f.header_end);
        r.remote_ip = c.remote_ip;
        r.remote_port = c.remote_port;
        r.local_ip = c.local_ip;
        r.local_port = c.local_port;
        r.last = ++c.served >= o.max_requests;
        c.state = Conn::Working;
        watch(id, c, 0);  // nothing to read while it is answered (hang-ups are still reported)
        {
            std::lock_guard<std::mutex> lock(m);
            work.emplace_back(id, std::move(r));
        }
        cv.notify_one();
        return true;
    }
    void readable(uint64_t id, Conn& c) {
        char buf[65536];
        for (;;) {
            const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
            if (n > 0) {
                if (!c.has_bytes) c.since = Clock::now(), c.has_bytes = true;
                c.in.append(buf, size_t(n));
                if (c.in.size() > o.max_header_bytes + o.max_body_bytes + sizeof buf) break;  // framing decides
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            if (n < 0 && errno == EINTR) continue;
            close(id);  // the client closed (or the connection broke) before a whole request
            return;
        }
        frame(id, c);
    }
    void io(uint64_t id, uint32_t events) {
        auto it = conns.find(id);
        if (it == conns.end()) return;
        Conn& c = it->second;
        if (events & EPOLLERR) return close(id);
        if (c.state == Conn::Working) {
            if (events & EPOLLHUP) close(id);  // the worker's reply is dropped
            return;
        }
        if (c.state == Conn::Reading && (events & (EPOLLIN | EPOLLHUP))) return readable(id, c);
        if (c.state == Conn::Writing && (events & EPOLLOUT)) flush(id, c);
        else if (events & EPOLLHUP) close(id);
    }
    void take_new() {
        std::vector<int> fds;
        std::vector<std::tuple<uint64_t, std::string, bool>> replies;
        {
            std::lock_guard<std::mutex> lock(m);
            fds.swap(pending);
            replies.swap(done);
        }
        for (int fd : fds) {
            ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
            if (conns.size() >= o.max_connections) {
                const std::string r = error_reply(503, "Service Unavailable",
                                                  "the server has " + std::to_string(o.max_connections) +
                                                      " connections open; try again later", 1);
                ssize_t n = ::send(fd, r.data(), r.size(), MSG_NOSIGNAL);
                (void)n;
                ::close(fd);
                continue;
            }
            const uint64_t id = next_id++;
            Conn& c = conns[id];
            c.fd = fd;
            c.since = Clock::now();
            address_of(fd, true, c.remote_ip, c.remote_port);
            address_of(fd, false, c.local_ip, c.local_port);
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.u64 = id;
            if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
                ::close(fd);
                conns.erase(id);
            }
        }
        for (auto& [id, bytes, close_after] : replies) {
            auto it = conns.find(id);
            if (it != conns.end()) reply(id, it->second, std::move(bytes), close_after);
        }
    }
    void expire() {
        const auto now = Clock::now();
        std::vector<uint64_t> late;
        for (auto& [id, c] : conns) {
            const double age = std::chrono::duration<double>(now - c.since).count();
            if ((c.state == Conn::Reading && age > (c.has_bytes ? o.request_seconds : o.idle_seconds)) ||
                (c.state == Conn::Writing && age > o.write_seconds))
                late.push_back(id);
        }
        for (uint64_t id : late) {
            auto it = conns.find(id);
            if (it == conns.end()) continue;
            Conn& c = it->second;
            if (c.state == Conn::Reading && c.has_bytes) {
                char limit[32];
                std::snprintf(limit, sizeof limit, "%g", o.request_seconds);
                reply(id, c, error_reply(408, "Request Timeout", std::string("the request did not arrive within ") +
                                                 limit + " s"), true);
            } else {
                close(id);
            }
        }
    }
    void loop() {
        epoll_event evs[64];
        while (!stop_loop) {
            const int n = ::epoll_wait(ep, evs, 64, 200);
            for (int i = 0; i < n; ++i) {
                if (evs[i].data.u64 == 0) {
                    uint64_t v;
                    ssize_t rc = ::read(wake_fd, &v, sizeof v);
                    (void)rc;
                } else {
                    io(evs[i].data.u64, evs[i].events);
                }
            }
            take_new();
            expire();
        }
        std::vector<uint64_t> ids;
        for (auto& kv : conns) ids.push_back(kv.first);
        for (uint64_t id : ids) close(id);
        std::lock_guard<std::mutex> lock(m);
        for (int fd : pending) ::close(fd);
        pending.clear();
    }
    void worker() {
        for (;;) {
            std::pair<uint64_t, RawRequest> item;
            {
                std::unique_lock<std::mutex> lock(m);
                cv.wait(lock, [&] { return stopping || !work.empty(); });
                if (stopping) return;
                item = std::move(work.front());
                work.pop_front();
            }
            bool close_after = item.second.last;
            std::string bytes;
            try {
                bytes = handler(item.second, close_after);
            } catch (...) {
                bytes = error_reply(500, "Internal Server Error", "internal error");
                close_after = true;
            }
            if (bytes.empty()) {  // nothing httplib could answer
                bytes = error_reply(400, "Bad Request", "malformed request");
                close_after = true;
            }
            {
                std::lock_guard<std::mutex> lock(m);
                done.emplace_back(item.first, std::move(bytes), close_after || item.second.last);
            }
            wake();
        }
    }
};

Connections::Connections(ConnectionOptions options, RequestHandler handler) : impl_(std::make_unique<Impl>()) {
    Impl& d = *impl_;
    d.o = options;
    d.o.workers = std::max(1, d.o.workers);
    d.handler = std::move(handler);
    d.ep = ::epoll_create1(EPOLL_CLOEXEC);
    d.wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = 0;
    ::epoll_ctl(d.ep, EPOLL_CTL_ADD, d.wake_fd, &ev);
    d.loop_thread = std::thread([&d] { d.loop(); });
    for (int i = 0; i < d.o.workers; ++i) d.workers.emplace_back([&d] { d.worker(); });
}

Connections::~Connections() {
    shutdown();
    ::close(impl_->ep);
    ::close(impl_->wake_fd);
}

void Connections::add(int fd) {
    Impl& d = *impl_;
    {
        std::lock_guard<std::mutex> lock(d.m);
        if (d.stopping) {
            ::close(fd);
            return;
        }
        d.pending.push_back(fd);
    }
    d.wake();
}

void Connections::shutdown() {
    Impl& d = *impl_;
    std::call_once(d.shut, [&d] {
        {
            std::lock_guard<std::mutex> lock(d.m);
            d.stopping = true;
        }
        d.cv.notify_all();
        d.stop_loop = true;
        d.wake();
        if (d.loop_thread.joinable()) d.loop_thread.join();
        for (auto& t : d.workers)
            if (t.joinable()) t.join();
    });
}

}  // namespace convscope::server
