// The server's connection layer: request framing against hand-made requests, and over real
// sockets that slow, idle, oversized and too many clients get their bounded answers while a
// normal client is still served.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "connections.hpp"
#include "convscope/app/explorer.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/io.hpp"
#include "server.hpp"
#include "test_util.hpp"

namespace convscope::server {
namespace {

constexpr size_t kHeader = 1024, kBody = 100;

TEST(Framing, ContentLengthAndPipelining) {
    const std::string a = "POST /x HTTP/1.1\r\nHost: h\r\nContent-length:  5\r\n\r\nhello";
    Framing f = frame_request(a, kHeader, kBody);
    EXPECT_EQ(f.state, Framing::Complete);
    EXPECT_EQ(f.end, a.size());
    EXPECT_EQ(f.header_end, a.size() - 5);
    // A second request behind it ends at the first one's end.
    f = frame_request(a + "GET / HTTP/1.1\r\n\r\n", kHeader, kBody);
    EXPECT_EQ(f.state, Framing::Complete);
    EXPECT_EQ(f.end, a.size());
    // Every prefix is incomplete.
    for (size_t n = 0; n < a.size(); ++n)
        EXPECT_EQ(frame_request(a.substr(0, n), kHeader, kBody).state, Framing::Incomplete) << n;
    // Bare newlines end lines too; no body without a length.
    f = frame_request("GET / HTTP/1.1\nHost: h\n\n", kHeader, kBody);
    EXPECT_EQ(f.state, Framing::Complete);
    EXPECT_EQ(f.end, 24u);
}

TEST(Framing, Chunked) {
    const std::string head = "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    const std::string body = "5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n";
    const Framing f = frame_request(head + body + "NEXT", kHeader, kBody);
    EXPECT_EQ(f.state, Framing::Complete);
    EXPECT_EQ(f.end, head.size() + body.size());
    for (size_t n = 0; n < body.size(); ++n)
        EXPECT_EQ(frame_request(head + body.substr(0, n), kHeader, kBody).state, Framing::Incomplete) << n;
    EXPECT_EQ(frame_request(head + "zz\r\n", kHeader, kBody).state, Framing::Bad);
    EXPECT_EQ(frame_request(head + "3\r\nabcd\r\n", kHeader, kBody).state, Framing::Bad);
    EXPECT_EQ(frame_request(head + "65\r\n", kHeader, kBody).state, Framing::TooLarge);  // 101 > 100
    EXPECT_EQ(frame_request(head + "ffffffffffffffffffff\r\n", kHeader, kBody).state, Framing::TooLarge);
}

TEST(Framing, LimitsAndBadHeaders) {
    EXPECT_EQ(frame_request("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", kHeader, kBody).state, Framing::TooLarge);
    EXPECT_EQ(frame_request("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", kHeader, kBody).state,
              Framing::Bad);
    EXPECT_EQ(frame_request("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", kHeader, kBody).state, Framing::Bad);
    EXPECT_EQ(frame_request("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", kHeader, kBody).state,
              Framing::Bad);
    EXPECT_EQ(frame_request("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", kHeader, kBody)
                  .state,
              Framing::Bad);
    EXPECT_EQ(frame_request("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", kHeader, kBody).state, Framing::Bad);
    EXPECT_EQ(frame_request("\r\n", kHeader, kBody).state, Framing::Bad);
    EXPECT_EQ(frame_request("GET / HTTP/1.1\r\nX: " + std::string(2000, 'a'), kHeader, kBody).state,
              Framing::HeadersTooLarge);
    EXPECT_EQ(frame_request(std::string(2000, 'a'), kHeader, kBody).state, Framing::HeadersTooLarge);
    const Framing f = frame_request("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n", kHeader, kBody);
    EXPECT_EQ(f.state, Framing::Incomplete);
    EXPECT_TRUE(f.expect_continue);
}

// --- over sockets -------------------------------------------------------------------------

int connect_to(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

void send_all(int fd, const std::string& s) {
    size_t p = 0;
    while (p < s.size()) {
        const ssize_t n = ::send(fd, s.data() + p, s.size() - p, MSG_NOSIGNAL);
        if (n <= 0) return;
        p += size_t(n);
    }
}

// What arrives within `seconds` or until the server closes; `closed` tells which.
std::string receive(int fd, double seconds, bool* closed = nullptr, size_t enough = std::string::npos) {
    std::string out;
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    if (closed) *closed = false;
    while (out.size() < enough) {
        const int left = int(std::chrono::duration<double, std::milli>(end - std::chrono::steady_clock::now()).count());
        if (left <= 0) break;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, left) <= 0) break;
        char buf[4096];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) {
            if (closed) *closed = true;
            break;
        }
        out.append(buf, size_t(n));
    }
    return out;
}

// A full reply: headers and a body of its Content-Length.
std::string one_reply(int fd, double seconds) {
    std::string r = receive(fd, seconds, nullptr, 0);
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    for (;;) {
        const size_t h = r.find("\r\n\r\n");
        if (h != std::string::npos) {
            const size_t cl = r.find("Content-Length: ");
            if (cl != std::string::npos && cl < h && r.size() >= h + 4 + std::stoul(r.substr(cl + 16))) return r;
        }
        if (std::chrono::steady_clock::now() > end) return r;
        const std::string more = receive(fd, 0.2, nullptr, 1);
        r += more;
    }
}

struct LiveServer {
    TempDir dir;
    std::unique_ptr<Explorer> explorer;
    std::unique_ptr<WebServer> web;
    std::thread thread;
    int port = 0;
    explicit LiveServer(ServerOptions so) {
        write_npy(dir / "items.npy", torch::rand({4, 1, 28, 28}));
        ExplorerOptions eo;
        eo.cache_dir = dir / "cache";
        explorer = std::make_unique<Explorer>(untrained_default_model(0), Dataset::open(dir / "items.npy"), eo);
        so.port = 0;
        web = std::make_unique<WebServer>(*explorer, so);
        port = web->bind();
        thread = std::thread([this] { web->serve(); });
    }
    ~LiveServer() {
        web->stop();
        thread.join();
    }
};

const std::string kGetDataset = "GET /api/dataset HTTP/1.1\r\nHost: h\r\n\r\n";

TEST(Server, SlowAndIdleClientsHoldNoWorker) {
    ServerOptions so;
    so.threads = 2;
    LiveServer s(so);
    // Forty clients that send half a request and then nothing: more than there are workers.
    std::vector<int> slow;
    for (int i = 0; i < 40; ++i) {
        slow.push_back(connect_to(s.port));
        ASSERT_GE(slow.back(), 0);
        send_all(slow.back(), "GET /api/dataset HTTP/1.1\r\nHo");
    }
    for (int i = 0; i < 10; ++i) slow.push_back(connect_to(s.port));  // and ten that send nothing
    const int fd = connect_to(s.port);
    send_all(fd, kGetDataset);
    const std::string r = one_reply(fd, 5.0);
    EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << r;
    EXPECT_NE(r.find("\"size\":4"), std::string::npos) << r;
    // Kept alive: a second request on the same connection, pipelined with a third.
    send_all(fd, kGetDataset + kGetDataset);
    const std::string two = receive(fd, 3.0, nullptr, 2 * r.size());
    EXPECT_EQ(two, r + r);
    ::close(fd);
    for (int f : slow) ::close(f);
}

TEST(Server, RequestDeadlineIdleTimeoutAndLimits) {
    ServerOptions so;
    so.request_seconds = 0.5;
    so.idle_seconds = 0.5;
    so.max_connections = 3;
    so.max_body_bytes = 1000;
    LiveServer s(so);
    // A request that takes longer than its deadline gets 408 and the connection closes.
    const int slow = connect_to(s.port);
    send_all(slow, "GET /api/dataset HTTP/1.1\r\n");
    bool closed = false;
    std::string r = receive(slow, 3.0, &closed);
    EXPECT_EQ(r.rfind("HTTP/1.1 408", 0), 0u) << r;
    EXPECT_NE(r.find("did not arrive within 0.5 s"), std::string::npos) << r;
    EXPECT_TRUE(closed);
    ::close(slow);
    // An idle connection is closed without a reply.
    const int idle = connect_to(s.port);
    r = receive(idle, 3.0, &closed);
    EXPECT_TRUE(r.empty()) << r;
    EXPECT_TRUE(closed);
    ::close(idle);
    // A body over the limit is refused from its Content-Length, before it is sent.
    const int big = connect_to(s.port);
    send_all(big, "POST /api/activations HTTP/1.1\r\nContent-Length: 5000\r\n\r\n");
    r = receive(big, 3.0, &closed);
    EXPECT_EQ(r.rfind("HTTP/1.1 413", 0), 0u) << r;
    EXPECT_TRUE(closed);
    ::close(big);
    // Malformed framing is a 400 that says why.
    const int bad = connect_to(s.port);
    send_all(bad, "POST /api/jobs HTTP/1.1\r\nContent-Length: x\r\n\r\n");
    r = receive(bad, 3.0, &closed);
    EXPECT_EQ(r.rfind("HTTP/1.1 400", 0), 0u) << r;
    EXPECT_NE(r.find("Content-Length"), std::string::npos) << r;
    ::close(bad);
    // More connections than the limit: 503 with Retry-After for the extra one.
    std::vector<int> open;
    for (int i = 0; i < 3; ++i) open.push_back(connect_to(s.port));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const int extra = connect_to(s.port);
    r = receive(extra, 3.0, &closed);
    EXPECT_EQ(r.rfind("HTTP/1.1 503", 0), 0u) << r;
    EXPECT_NE(r.find("Retry-After: 1"), std::string::npos) << r;
    ::close(extra);
    for (int f : open) ::close(f);
}

TEST(Server, ExpectContinue) {
    LiveServer s(ServerOptions{});
    const int fd = connect_to(s.port);
    const std::string body = "{\"index\": 1}";
    send_all(fd, "POST /api/activations?layers=fc2 HTTP/1.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                 "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n");
    const std::string cont = receive(fd, 3.0, nullptr, 25);
    EXPECT_EQ(cont, "HTTP/1.1 100 Continue\r\n\r\n");
    send_all(fd, body);
    const std::string r = one_reply(fd, 5.0);
    EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << r;
    EXPECT_NE(r.find("\"image\":\"d1\""), std::string::npos) << r.substr(0, 300);
    EXPECT_EQ(r.find("100 Continue"), std::string::npos);  // only once
    ::close(fd);
}

TEST(Server, RespondWithoutSocket) {
    TempDir dir;
    write_npy(dir / "items.npy", torch::rand({4, 1, 28, 28}));
    ExplorerOptions eo;
    eo.cache_dir = dir / "cache";
    Explorer ex(untrained_default_model(0), Dataset::open(dir / "items.npy"), eo);
    WebServer web(ex, ServerOptions{});
    std::string r = web.respond(kGetDataset);
    EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << r;
    r = web.respond("GET /api/items?start=0&count=x HTTP/1.1\r\n\r\n");
    EXPECT_EQ(r.rfind("HTTP/1.1 400", 0), 0u) << r;
    EXPECT_NE(r.find("'count' must be an integer, got 'x'"), std::string::npos) << r;
    // A path that is not UTF-8 is named in the reply (invalid bytes as U+FFFD), not a crash.
    r = web.respond("GET /api/items/2p\xffng HTTP/1.1\r\n\r\n");
    EXPECT_EQ(r.rfind("HTTP/1.1 404", 0), 0u) << r;
    EXPECT_NE(r.find("not found: /api/items/2p\xef\xbf\xbdng"), std::string::npos) << r;
    r = web.respond("GET /api/filter.png?layer=%FF&channel=0 HTTP/1.1\r\n\r\n");
    EXPECT_EQ(r.rfind("HTTP/1.1 404", 0), 0u) << r;
    EXPECT_NE(r.find("unknown layer '\xef\xbf\xbd'"), std::string::npos) << r;
    r = web.respond("BREW /pot HTTP/1.1\r\n\r\n");
    EXPECT_EQ(r.rfind("HTTP/1.1 400", 0), 0u) << r;
}

}  // namespace
}  // namespace convscope::server
