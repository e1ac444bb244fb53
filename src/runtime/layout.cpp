#include "convscope/runtime/layout.hpp"

#include <torch/torch.h>

#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope {

namespace {
constexpr EnumTable<LayoutKind, 6> kLayoutNames = {{{LayoutKind::Nchw, "nchw"},
                                                    {LayoutKind::Nhwc, "nhwc"},
                                                    {LayoutKind::Tokens, "tokens"},
                                                    {LayoutKind::Vector, "vector"},
                                                    {LayoutKind::Attention, "attention"},
                                                    {LayoutKind::Other, "other"}}};

std::string describe(const Layout& l) {
    return std::string(layout_kind_name(l.kind)) +
           (l.grid_h > 0 ? " with a " + std::to_string(l.grid_h) + "x" + std::to_string(l.grid_w) + " grid" : "");
}
}  // namespace

const char* layout_kind_name(LayoutKind kind) { return enum_name(kLayoutNames, kind); }

std::vector<int64_t> Layout::map_shape() const {
    if (spatial()) return {channels, grid_h, grid_w};
    if (kind == LayoutKind::Vector) return {channels};
    return {};
}

std::string layout_summary(const Layout& l) {
    std::string s = layout_kind_name(l.kind);
    const std::string grid = std::to_string(l.grid_h) + "x" + std::to_string(l.grid_w);
    if (l.kind == LayoutKind::Nhwc || (l.kind == LayoutKind::Tokens && l.grid_h > 0)) s += " " + grid;
    if (l.kind == LayoutKind::Tokens && l.extra_front + l.extra_back > 0)
        s += "+" + std::to_string(l.extra_front + l.extra_back);
    if (l.kind == LayoutKind::Attention) {
        s += " " + std::to_string(l.heads) + (l.heads == 1 ? " head" : " heads");
        if (l.window > 0)
            s += ", " + std::to_string(l.window) + "x" + std::to_string(l.window) + " windows" +
                 (l.shift ? " shifted " + std::to_string(l.shift) : "");
    }
    return s;
}

at::Tensor as_maps(const at::Tensor& out, const Layout& l) {
    if (!l.spatial())
        throw Error("outputs laid out as " + describe(l) + " are not maps: pick a layer with a spatial output");
    const int64_t n = out.size(0);
    auto fits = [&](std::vector<int64_t> want) {
        want.insert(want.begin(), n);
        if (out.sizes().vec() != want)
            throw Error("outputs of shape " + detail::shape_str(out.sizes().vec()) + " do not fit the layout " +
                        describe(l) + " (expected " + detail::shape_str(want) +
                        "): pass --grid HxW with the patch grid or the input size the model was made for");
    };
    switch (l.kind) {
        case LayoutKind::Nchw:
            fits({l.channels, l.grid_h, l.grid_w});
            return out.to(torch::kFloat);
        case LayoutKind::Nhwc:
            fits({l.grid_h, l.grid_w, l.channels});
            return out.to(torch::kFloat).permute({0, 3, 1, 2}).contiguous();
        default: {
            fits({l.extra_front + l.grid_h * l.grid_w + l.extra_back, l.channels});
            return out.to(torch::kFloat)
                .narrow(1, l.extra_front, l.grid_h * l.grid_w)
                .transpose(1, 2)
                .reshape({n, l.channels, l.grid_h, l.grid_w})
                .contiguous();
        }
    }
}

at::Tensor extra_tokens(const at::Tensor& out, const Layout& l) {
    if (l.kind != LayoutKind::Tokens || out.dim() != 3)
        return torch::zeros({out.size(0), 0, l.channels}, torch::kFloat);
    const int64_t grid = l.grid_h * l.grid_w;
    return torch::cat({out.narrow(1, 0, l.extra_front), out.narrow(1, l.extra_front + grid, l.extra_back)}, 1)
        .to(torch::kFloat);
}

at::Tensor from_maps(const at::Tensor& maps, const Layout& l) {
    if (!l.spatial()) throw Error("outputs laid out as " + describe(l) + " are not maps");
    const int64_t n = maps.size(0);
    switch (l.kind) {
        case LayoutKind::Nchw: return maps;
        case LayoutKind::Nhwc: return maps.permute({0, 2, 3, 1}).contiguous();
        default: {
            const at::Tensor grid = maps.reshape({n, l.channels, l.grid_h * l.grid_w}).transpose(1, 2);
            return torch::cat({torch::zeros({n, l.extra_front, l.channels}, maps.options()), grid,
                               torch::zeros({n, l.extra_back, l.channels}, maps.options())},
                              1)
                .contiguous();
        }
    }
}

std::pair<int64_t, int64_t> parse_grid(const std::string& text) {
    const auto x = text.find_first_of("xX");
    try {
        if (x != std::string::npos) {
            size_t used_h = 0, used_w = 0;
            const std::string hs = text.substr(0, x), ws = text.substr(x + 1);
            const long long h = std::stoll(hs, &used_h), w = std::stoll(ws, &used_w);
            if (used_h == hs.size() && used_w == ws.size() && h > 0 && w > 0 && h <= 4096 && w <= 4096)
                return {h, w};
        }
    } catch (const std::exception&) {
    }
    throw UsageError("--grid must be HxW with two positive numbers up to 4096, e.g. 14x14, got '" + text + "'");
}

}  // namespace convscope
