// convscope: the command line. Parses arguments into a command's options, runs it, and turns
// errors into one line on stderr and an exit code: 0 success, 1 failure, 2 usage error,
// 128 + the signal when SIGINT or SIGTERM stopped it. Under mpirun or srun the ranks run the
// commands that split their work (top-patches, embed, evaluate); a rank that fails stops them all.
#include <c10/util/Exception.h>

#include <algorithm>
#include <csignal>
#include <iostream>
#include <string>

#include "common.hpp"
#include "convscope/runtime/cluster.hpp"
#include "convscope/runtime/error.hpp"

namespace {

// Ends the process with `code`: with several ranks a failure stops every rank (none is left
// waiting in a collective), a success ends MPI first.
int finish(int code) {
    using namespace convscope;
    if (cluster::distributed() && code != 0) cluster::abort(code);
    cluster::finish();
    return code;
}

// Writes "convscope: TEXT" and a newline to stderr in one write: under mpirun the launcher
// forwards each write of a rank on its own, and a line written in parts can be cut by the
// launcher's own messages (its report of the abort that follows).
void say(const std::string& text) {
    const std::string line = "convscope: " + text + "\n";
    std::cerr.write(line.data(), std::streamsize(line.size()));
    std::cerr.flush();
}

// The commands whose items the ranks of mpirun split.
bool runs_distributed(const std::string& command) {
    return command == "top-patches" || command == "embed" || command == "evaluate";
}

}  // namespace

int main(int argc, char** argv) {
    using namespace convscope;
    try {
        cluster::start(&argc, &argv);
    } catch (const Error& e) {
        say(e.what());
        return 1;
    }
    std::string line;
    for (int i = 0; i < argc; ++i) line += (i ? " " : "") + std::string(argv[i]);
    cli::command_line() = line;

    CLI::App app{"convscope: see what happens inside a trained convolutional network"};
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("convscope ") + CONVSCOPE_VERSION + " (memory: " + memory_allocator() + ")");
    auto& registry = cli::command_registry();
    std::stable_sort(registry.begin(), registry.end(),
                     [](const auto& a, const auto& b) { return a.order < b.order; });
    std::vector<std::pair<CLI::App*, cli::RunFn>> commands;
    for (const auto& spec : registry) {
        CLI::App* sub = app.add_subcommand(spec.name, spec.help);
        commands.emplace_back(sub, spec.setup(*sub));
    }
    // Every rank parses the same arguments, so every rank stops alike on a usage error; only rank
    // 0 says why.
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = cluster::rank() == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2);
        cluster::finish();
        return code == 0 ? 0 : 2;
    } catch (const UsageError& e) {
        if (cluster::rank() == 0) say(e.what());
        cluster::finish();
        return 2;
    }
    for (auto& [sub, run] : commands)
        if (sub->parsed() && cluster::distributed() && !runs_distributed(sub->get_name())) {
            if (cluster::rank() == 0)
                say(sub->get_name() +
                    " runs as one process; under mpirun or srun only top-patches, embed and evaluate split their work "
                    "between the ranks: run it without the launcher");
            cluster::finish();
            return 2;
        }
    cli::install_interrupt_handlers();  // serve takes the signals itself
    try {
        for (auto& [sub, run] : commands)
            if (sub->parsed()) return finish(run());
    } catch (const cluster::AgreedError& e) {
        // Every rank is here with the same message: rank 0 says it, all end without an abort.
        if (cluster::rank() == 0) say(e.what());
        cluster::finish();
        return 1;
    } catch (...) {
        const ErrorReport e = current_error();
        if (const int sig = cli::interrupt_signal(); sig != 0 && e.kind == ErrorKind::Cancelled) {
            say(std::string("interrupted by ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") +
                ": stopped; the files written so far are complete (a top-patches scan resumes from its checkpoint)");
            return finish(128 + sig);
        }
        say((cluster::distributed()
                 ? "rank " + std::to_string(cluster::rank()) + " of " + std::to_string(cluster::size()) + ": "
                 : std::string()) +
            e.message + (e.kind == ErrorKind::OutOfMemory ? ": use fewer items (--indices) or smaller batches" : ""));
        return finish(e.kind == ErrorKind::Usage ? 2 : 1);
    }
    return finish(2);
}
