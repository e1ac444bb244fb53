#pragma once
// The server's connections, apart from what it answers: one event thread (epoll) reads requests
// and writes replies for every connection, so that a slow or idle client holds a buffer and never
// a worker thread; only complete requests go to the workers. Every wait is bounded: the time to
// send a whole request, the idle time of a kept-alive connection, the time to take a reply, the
// sizes of headers and bodies and the number of connections at once.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace convscope::server {

struct ConnectionOptions {
    int workers = 16;                     // threads that answer complete requests (>= 1)
    size_t max_connections = 512;         // more are answered 503 and closed
    double request_seconds = 30;          // from a request's first byte to its last; then 408
    double idle_seconds = 5;              // a connection without a request this long is closed
    double write_seconds = 30;            // for the client to take a whole reply; then closed
    size_t max_header_bytes = 64u << 10;  // request line and headers; more get 431
    size_t max_body_bytes = 4u << 20;     // larger bodies get 413 before they are read
    size_t max_requests = 100;            // requests on one kept-alive connection
};

// One complete request as the client sent it, and who sent it.
struct RawRequest {
    std::string bytes;             // request line, headers and body (an Expect header removed)
    std::string remote_ip, local_ip;
    int remote_port = -1, local_port = -1;
    bool last = false;             // the connection closes after this reply (max_requests)
};

// Answers one complete request: the reply's bytes; sets `close` to end the connection after it.
using RequestHandler = std::function<std::string(const RawRequest&, bool& close)>;

// Where a request ends in what a connection has received so far.
struct Framing {
    enum State { Incomplete, Complete, TooLarge, HeadersTooLarge, Bad } state = Incomplete;
    size_t header_end = 0;         // bytes of the request line and headers (with the blank line)
    size_t end = 0;                // Complete: bytes of the whole request
    bool expect_continue = false;  // the client waits for "100 Continue" before its body
    std::string why;               // Bad: what is wrong
};
// Frames an HTTP/1.x request by its Content-Length or chunked transfer encoding.
Framing frame_request(const std::string& received, size_t max_header_bytes, size_t max_body_bytes);

class Connections {
public:
    Connections(ConnectionOptions options, RequestHandler handler);
    ~Connections();  // closes every connection and joins the threads
    Connections(const Connections&) = delete;
    Connections& operator=(const Connections&) = delete;

    // Takes an accepted socket (and closes it when done with it).
    void add(int fd);
    // Closes every connection and stops the threads; later add() calls close their socket.
    void shutdown();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace convscope::server
