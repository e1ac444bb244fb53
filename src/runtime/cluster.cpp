// Ranks of one run over MPI (Open MPI, MPICH or Slurm's PMI), or this process alone.
#include "convscope/runtime/cluster.hpp"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>

#include "convscope/runtime/error.hpp"

#ifdef CONVSCOPE_WITH_MPI
#include <mpi.h>
#endif

namespace convscope::cluster {
namespace {

int g_rank = 0, g_size = 1;
bool g_started = false;

// Whether a launcher started this process: mpirun (Open MPI, MPICH/Hydra) and srun set these.
bool launched() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"})
        if (std::getenv(v)) return true;
    return false;
}

#ifdef CONVSCOPE_WITH_MPI
void check_mpi(int rc, const char* what) {
    if (rc != MPI_SUCCESS) throw Error(std::string("MPI ") + what + " failed (error " + std::to_string(rc) + ")");
}
#endif

}  // namespace

void start(int* argc, char*** argv) {
#ifdef CONVSCOPE_WITH_MPI
    if (g_started || !launched()) return;
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    g_started = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
#else
    (void)argc;
    (void)argv;
    if (launched() && std::getenv("OMPI_COMM_WORLD_SIZE") && std::string(std::getenv("OMPI_COMM_WORLD_SIZE")) != "1")
        throw Error("this convscope was built without MPI, so the ranks of mpirun would each do the whole job: "
                    "install Open MPI (scripts/setup.sh) and build again, or run one process");
#endif
}

void finish() {
#ifdef CONVSCOPE_WITH_MPI
    if (!g_started) return;
    MPI_Finalize();
    g_started = false;
#endif
}

bool built_with_mpi() {
#ifdef CONVSCOPE_WITH_MPI
    return true;
#else
    return false;
#endif
}

int rank() { return g_rank; }
int size() { return g_size; }
bool distributed() { return g_size > 1; }

std::vector<std::string> gather(const std::string& bytes) {
    if (!distributed()) return {bytes};
#ifdef CONVSCOPE_WITH_MPI
    if (bytes.size() > size_t(INT_MAX))
        throw Error("a rank's share of the results is " + std::to_string(bytes.size()) +
                    " bytes, more than one MPI message holds: use more ranks");
    int mine = int(bytes.size());
    std::vector<int> sizes(g_size, 0), offsets(g_size, 0);
    check_mpi(MPI_Gather(&mine, 1, MPI_INT, sizes.data(), 1, MPI_INT, 0, MPI_COMM_WORLD), "gather of sizes");
    long long total = 0;
    for (int r = 0; r < g_size; ++r) {
        offsets[size_t(r)] = int(total);
        total += sizes[size_t(r)];
    }
    if (g_rank == 0 && total > INT_MAX)
        throw Error("the ranks' results are " + std::to_string(total) + " bytes, more than one MPI message holds");
    std::string all(g_rank == 0 ? size_t(total) : 0, '\0');
    check_mpi(MPI_Gatherv(bytes.data(), mine, MPI_BYTE, all.data(), sizes.data(), offsets.data(), MPI_BYTE, 0,
                          MPI_COMM_WORLD),
              "gather");
    if (g_rank != 0) return {};
    std::vector<std::string> out;
    for (int r = 0; r < g_size; ++r) out.push_back(all.substr(size_t(offsets[size_t(r)]), size_t(sizes[size_t(r)])));
    return out;
#else
    return {bytes};
#endif
}

std::string broadcast(const std::string& bytes) {
    if (!distributed()) return bytes;
#ifdef CONVSCOPE_WITH_MPI
    long long n = (long long)bytes.size();
    check_mpi(MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD), "broadcast of a size");
    if (n > INT_MAX) throw Error("a broadcast of " + std::to_string(n) + " bytes is more than one MPI message holds");
    std::string out = g_rank == 0 ? bytes : std::string(size_t(n), '\0');
    check_mpi(MPI_Bcast(out.data(), int(n), MPI_BYTE, 0, MPI_COMM_WORLD), "broadcast");
    return out;
#else
    return bytes;
#endif
}

void check_same(const std::string& what, const std::string& value) {
    if (!distributed()) return;
    const std::string reference = broadcast(value);
    // Every rank learns whether any differs, so that all throw together (none waits alone).
    std::string differing;
#ifdef CONVSCOPE_WITH_MPI
    const int mine = value == reference ? 0 : 1;
    std::vector<int> flags(g_size, 0);
    check_mpi(MPI_Allgather(&mine, 1, MPI_INT, flags.data(), 1, MPI_INT, MPI_COMM_WORLD), "allgather");
    for (int r = 0; r < g_size; ++r)
        if (flags[size_t(r)]) differing += (differing.empty() ? "" : ", ") + std::to_string(r);
#endif
    if (!differing.empty())
        throw AgreedError("the ranks disagree about " + what + ": rank(s) " + differing +
                    " differ from rank 0; every rank must read the same files (a shared file system, the same "
                    "paths and options)");
}

void abort(int code) {
#ifdef CONVSCOPE_WITH_MPI
    if (g_started) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    std::_Exit(code);
}

std::string rank_path(const std::string& path) {
    if (!distributed() || path.empty()) return path;
    return path + ".rank" + std::to_string(g_rank);
}

std::vector<int64_t> positions_of(int r, int ranks, int64_t n, int64_t batch) {
    std::vector<int64_t> out;
    if (batch < 1) batch = 1;
    if (ranks < 1) ranks = 1;
    for (int64_t b = 0, start = 0; start < n; ++b, start += batch)
        if (b % ranks == r)
            for (int64_t i = start; i < std::min(n, start + batch); ++i) out.push_back(i);
    return out;
}

std::vector<int64_t> my_positions(int64_t n, int64_t batch) { return positions_of(g_rank, g_size, n, batch); }

}  // namespace convscope::cluster
