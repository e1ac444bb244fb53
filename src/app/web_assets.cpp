#include "convscope/app/web_assets.hpp"

#include "convscope/runtime/error.hpp"

namespace convscope::detail {

const WebAsset* find_web_asset(const std::string& name) {
    for (const auto& a : web_assets())
        if (name == a.name) return &a;
    return nullptr;
}

std::string web_asset_text(const std::string& name) {
    const WebAsset* a = find_web_asset(name);
    CONVSCOPE_CHECK(a, "web asset missing from the build");
    return std::string(reinterpret_cast<const char*>(a->data), a->size);
}

std::string web_asset_content_type(const std::string& name) {
    auto ends = [&](const char* suffix) {
        const std::string s(suffix);
        return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    if (ends(".html")) return "text/html; charset=utf-8";
    if (ends(".js")) return "text/javascript; charset=utf-8";
    if (ends(".css")) return "text/css; charset=utf-8";
    if (ends(".svg")) return "image/svg+xml";
    if (ends(".png")) return "image/png";
    if (ends(".json")) return "application/json";
    return "application/octet-stream";
}

}  // namespace convscope::detail
