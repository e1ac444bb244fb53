#pragma once
// The processes of one run: several ranks started by an MPI launcher (`mpirun -n R convscope ...`
// or `srun` under Slurm), or this process alone. Dataset scans split their items between the
// ranks and the results meet on rank 0, which writes the files one process would write.
// Without a launcher, and in builds without MPI, there is one rank and every call is local.
// Collectives must be called by every rank in the same order; a rank that fails calls
// cluster::abort, which stops the others (mpirun ends them) instead of leaving them waiting.
#include <cstdint>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"

namespace convscope::cluster {

// An error that every rank raises at the same point, decided by a collective (check_same): the
// ranks can stop together without an abort, and one of them (rank 0) says why.
class AgreedError : public Error {
public:
    using Error::Error;
};

// Starts MPI when an MPI launcher started this process (its environment says so); otherwise
// nothing. Call once, first thing in main. finish() ends MPI after a successful run.
void start(int* argc, char*** argv);
void finish();

bool built_with_mpi();
int rank();   // 0 .. size() - 1
int size();   // 1 without a launcher
bool distributed();  // size() > 1

// Every rank's bytes, in rank order, on rank 0; the other ranks get an empty vector.
std::vector<std::string> gather(const std::string& bytes);
// Rank 0's bytes on every rank.
std::string broadcast(const std::string& bytes);
// Throws AgreedError on every rank when the ranks do not all pass the same value: `what` names the
// value (for example "the model file's hash"), and the message lists the ranks that differ.
void check_same(const std::string& what, const std::string& value);
// Prints nothing; ends every rank with this exit code (MPI_Abort), or exits this process.
[[noreturn]] void abort(int code);

// `path` for this rank: unchanged with one rank, `path.rankR` otherwise (each rank's checkpoint).
std::string rank_path(const std::string& path);

// The share of a list of n items that rank r of `ranks` takes, in batches of `batch` items: batch b
// (items b*batch .. (b+1)*batch - 1) belongs to rank b mod ranks. Batches keep the composition one
// process gives them, so per-item results are the same bits. Positions into the list, in order.
std::vector<int64_t> positions_of(int r, int ranks, int64_t n, int64_t batch);
std::vector<int64_t> my_positions(int64_t n, int64_t batch);  // positions_of(rank(), size(), ...)

}  // namespace convscope::cluster
