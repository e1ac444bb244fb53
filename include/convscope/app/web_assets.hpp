#pragma once
// The web explorer's and the report's HTML/JS/CSS (src/app/web), embedded into the binary at
// build time (a generated source made by src/app/embed_assets.cmake).
#include <cstddef>
#include <string>
#include <vector>

namespace convscope::detail {

struct WebAsset {
    const char* name;            // file name in the asset folder, e.g. "app.js"
    const unsigned char* data;   // its bytes (followed by a 0 byte)
    std::size_t size;            // number of bytes, without the trailing 0
};

// Every asset, sorted by name.
const std::vector<WebAsset>& web_assets();
// The asset called `name`, or nullptr.
const WebAsset* find_web_asset(const std::string& name);
// The bytes of an asset that must exist (an internal invariant: asserts otherwise).
std::string web_asset_text(const std::string& name);
// The Content-Type for an asset name, from its extension.
std::string web_asset_content_type(const std::string& name);

}  // namespace convscope::detail
