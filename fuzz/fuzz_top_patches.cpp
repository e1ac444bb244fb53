// top_patches.json files and checkpoints as --merge and --checkpoint read them (JSON parsed
// without exceptions, then the reader), and the merge of a file with itself.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "convscope/methods/top_patches.hpp"
#include "convscope/runtime/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
    try {
        const convscope::TopPatchesResult r = convscope::top_patches_from_json(j, "input");
        (void)convscope::top_patches_to_json(r);
        if (r.shard_count == 2) {
            convscope::TopPatchesResult other = r;
            other.shard_index = 1 - r.shard_index;
            (void)convscope::merge_top_patches({r, other});
        }
    } catch (const convscope::Error&) {
    }
    return 0;
}
