// A stable sort of float keys by their bits: the order that ranks a map's values, shared by
// Spearman's ranks (the sanity checks) and the relevance order of the faithfulness metrics.
#pragma once

#include <cstdint>
#include <vector>

namespace convscope::detail {

// The bits of a finite float as an unsigned number with the same order (-0 and +0 one key);
// descending gives the reverse order.
uint32_t orderable_key(float f, bool descending = false);

// Sorts key ascending and permutes idx with it, stably (equal keys keep their order): an LSD
// radix sort, 4 passes of 8 bits, O(n). key and idx have the same size; scratch is resized.
void radix_sort(std::vector<uint32_t>& key, std::vector<uint32_t>& idx, std::vector<uint32_t>& key_scratch,
                std::vector<uint32_t>& idx_scratch);

}  // namespace convscope::detail
