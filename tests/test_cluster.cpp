// The ranks of a run without a launcher (one rank, every call local) and the split of items into
// ranks' batches. Runs on several ranks are tested end to end (tests/e2e/mpi.sh).
#include <gtest/gtest.h>

#include <set>

#include "convscope/runtime/cluster.hpp"

using namespace convscope;

TEST(Cluster, OneRankWithoutALauncher) {
    EXPECT_EQ(cluster::rank(), 0);
    EXPECT_EQ(cluster::size(), 1);
    EXPECT_FALSE(cluster::distributed());
    EXPECT_EQ(cluster::gather("abc"), std::vector<std::string>{"abc"});
    EXPECT_EQ(cluster::broadcast("xyz"), "xyz");
    EXPECT_NO_THROW(cluster::check_same("anything", "value"));
    EXPECT_EQ(cluster::rank_path("ck.json"), "ck.json");
    // One rank takes every item, in order.
    EXPECT_EQ(cluster::my_positions(5, 2), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

// Rank r of R takes batches r, r + R, ...: together the ranks take every item exactly once, and
// each batch is the one a single process forms.
TEST(Cluster, BatchesGoToRanksInTurn) {
    // 23 items in batches of 4 (6 batches, the last of 3) over 3 ranks.
    EXPECT_EQ(cluster::positions_of(0, 3, 23, 4), (std::vector<int64_t>{0, 1, 2, 3, 12, 13, 14, 15}));
    EXPECT_EQ(cluster::positions_of(1, 3, 23, 4), (std::vector<int64_t>{4, 5, 6, 7, 16, 17, 18, 19}));
    EXPECT_EQ(cluster::positions_of(2, 3, 23, 4), (std::vector<int64_t>{8, 9, 10, 11, 20, 21, 22}));
    for (int ranks : {1, 2, 5, 9}) {
        std::set<int64_t> seen;
        for (int r = 0; r < ranks; ++r)
            for (int64_t p : cluster::positions_of(r, ranks, 23, 4)) EXPECT_TRUE(seen.insert(p).second) << ranks;
        EXPECT_EQ(seen.size(), 23u) << ranks;
    }
    EXPECT_TRUE(cluster::positions_of(3, 5, 10, 4).empty());  // more ranks than batches: nothing
    EXPECT_EQ(cluster::positions_of(0, 1, 3, 0), (std::vector<int64_t>{0, 1, 2}));  // batch < 1 counts as 1
}
