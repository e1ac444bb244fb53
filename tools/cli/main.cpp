// convscope: the command line. Parses arguments into a command's options, runs it, and turns
// errors into one line on stderr and an exit code: 0 success, 1 failure, 2 usage error,
// 128 + the signal when SIGINT or SIGTERM stopped it.
#include <c10/util/Exception.h>

#include <algorithm>
#include <csignal>
#include <iostream>

#include "common.hpp"
#include "convscope/runtime/error.hpp"

int main(int argc, char** argv) {
    using namespace convscope;
    std::string line;
    for (int i = 0; i < argc; ++i) line += (i ? " " : "") + std::string(argv[i]);
    cli::command_line() = line;

    CLI::App app{"convscope: see what happens inside a trained convolutional network"};
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("convscope ") + CONVSCOPE_VERSION);
    auto& registry = cli::command_registry();
    std::stable_sort(registry.begin(), registry.end(),
                     [](const auto& a, const auto& b) { return a.order < b.order; });
    std::vector<std::pair<CLI::App*, cli::RunFn>> commands;
    for (const auto& spec : registry) {
        CLI::App* sub = app.add_subcommand(spec.name, spec.help);
        commands.emplace_back(sub, spec.setup(*sub));
    }
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e);
        return code == 0 ? 0 : 2;
    } catch (const UsageError& e) {
        std::cerr << "convscope: " << e.what() << "\n";
        return 2;
    }
    cli::install_interrupt_handlers();  // serve takes the signals itself
    try {
        for (auto& [sub, run] : commands)
            if (sub->parsed()) return run();
    } catch (...) {
        const ErrorReport e = current_error();
        if (const int sig = cli::interrupt_signal(); sig != 0 && e.kind == ErrorKind::Cancelled) {
            std::cerr << "convscope: interrupted by " << (sig == SIGINT ? "SIGINT" : "SIGTERM")
                      << ": stopped; the files written so far are complete (a top-patches scan resumes from its "
                         "checkpoint)\n";
            return 128 + sig;
        }
        std::cerr << "convscope: " << e.message
                  << (e.kind == ErrorKind::OutOfMemory ? ": use fewer items (--indices) or smaller batches" : "") << "\n";
        return e.kind == ErrorKind::Usage ? 2 : 1;
    }
    return 2;
}
