// Where each top patch lies in its image (receptive field or gradient) and the crops of the
// pictures.
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <vector>

#include "convscope/methods/top_patches.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/render.hpp"
#include "methods/detail/top_patches_files.hpp"

namespace convscope {

std::vector<Box> gradient_boxes(const Model& model, const std::string& layer,
                                const at::Tensor& images_nchw,
                                const std::vector<std::array<int64_t, 3>>& units) {
    const int64_t N = images_nchw.size(0);
    if (static_cast<int64_t>(units.size()) != N)
        throw Error("gradient_boxes needs one unit per image (" + std::to_string(N) + " images, " +
                    std::to_string(units.size()) + " units)");
    std::vector<Box> boxes;
    if (N == 0) return boxes;
    std::vector<int64_t> ch(static_cast<size_t>(N)), ys(static_cast<size_t>(N)), xs(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) {
        ch[size_t(i)] = units[size_t(i)][0];
        ys[size_t(i)] = units[size_t(i)][1];
        xs[size_t(i)] = units[size_t(i)][2];
    }
    const auto opt = torch::TensorOptions().dtype(torch::kLong);
    const at::Tensor rows = torch::arange(N, opt);
    const at::Tensor c_t = torch::tensor(ch, opt), y_t = torch::tensor(ys, opt), x_t = torch::tensor(xs, opt);
    // Images of a batch are independent in eval mode, so the sum of the units (one per image)
    // gives each image the gradient of its own unit.
    auto scalar_of = [&](const TapResult& r) {
        const at::Tensor& t = r.taps.at(layer);
        if (t.dim() == 4) return t.index({rows, c_t, y_t, x_t}).sum();
        if (t.dim() == 2) return t.index({rows, c_t}).sum();
        throw Error("layer '" + layer + "' has no [C,H,W] or [F] output");
    };
    const auto g = model.gradients(images_nchw, scalar_of, {}, {layer});
    const at::Tensor mag = g.input_grad.abs().sum(1).ne(0).to(torch::kCPU).contiguous();  // [N,H,W] bool
    const int64_t H = mag.size(1), W = mag.size(2);
    const bool* p = mag.data_ptr<bool>();
    for (int64_t i = 0; i < N; ++i) {
        Box b{H, W, 0, 0};
        for (int64_t y = 0; y < H; ++y)
            for (int64_t x = 0; x < W; ++x)
                if (p[(i * H + y) * W + x]) {
                    b.y0 = std::min(b.y0, y);
                    b.x0 = std::min(b.x0, x);
                    b.y1 = std::max(b.y1, y + 1);
                    b.x1 = std::max(b.x1, x + 1);
                }
        if (b.y1 <= b.y0) b = Box{0, 0, H, W};  // no gradient at all: the unit is flat here
        boxes.push_back(b);
    }
    return boxes;
}

std::vector<std::vector<cv::Mat>> patch_crops(const Dataset& data, const Preprocess& pre,
                                              const std::vector<std::vector<PatchEntry>>& entries,
                                              int size_px) {
    std::vector<std::vector<cv::Mat>> out(entries.size());
    std::vector<std::pair<int64_t, std::pair<size_t, size_t>>> todo;  // image, (list, slot)
    for (size_t i = 0; i < entries.size(); ++i) {
        out[i].resize(entries[i].size());
        for (size_t j = 0; j < entries[i].size(); ++j) todo.push_back({entries[i][j].image, {i, j}});
    }
    std::sort(todo.begin(), todo.end());
    constexpr size_t kChunk = 64;  // images decoded at a time
    size_t t = 0;
    while (t < todo.size()) {
        std::vector<int64_t> images;
        size_t end = t;
        while (end < todo.size() && (images.size() < kChunk || todo[end].first == images.back())) {
            if (images.empty() || images.back() != todo[end].first) images.push_back(todo[end].first);
            ++end;
        }
        const at::Tensor shown = pre.to_display(data.batch(images, pre));  // [n,H,W,C] uint8
        const int64_t H = shown.size(1), W = shown.size(2);
        size_t row = 0;
        for (size_t i = t; i < end; ++i) {
            while (images[row] != todo[i].first) ++row;
            const auto [li, slot] = todo[i].second;
            const Box& b = entries[li][slot].box;
            const int64_t y0 = std::clamp<int64_t>(b.y0, 0, H - 1), x0 = std::clamp<int64_t>(b.x0, 0, W - 1);
            const int64_t y1 = std::clamp<int64_t>(b.y1, y0 + 1, H), x1 = std::clamp<int64_t>(b.x1, x0 + 1, W);
            const at::Tensor crop = shown[int64_t(row)].slice(0, y0, y1).slice(1, x0, x1).contiguous();
            out[li][slot] = resize_to_fit(image_from_hwc_uint8(crop), size_px);
        }
        t = end;
    }
    return out;
}

namespace top_patches_detail {

void fill_boxes(const Model& model, const Dataset& data, const Preprocess& pre,
                TopPatchesResult& r, int64_t chunk) {
    const int64_t H = pre.input_shape.at(1), W = pre.input_shape.at(2);
    for (auto& L : r.layers) {
        if (!L.gradient_boxes) {
            for (auto& c : L.channels) {
                for (auto* list : {&c.top, &c.bottom})
                    for (auto& e : *list) e.box = unit_box(L.crop_rf, e.y, e.x, H, W);
            }
            continue;
        }
        // Entries sorted by image, so each chunk loads a run of images once.
        std::vector<std::pair<PatchEntry*, int64_t>> todo;  // entry, channel
        for (size_t ci = 0; ci < L.channels.size(); ++ci)
            for (auto* list : {&L.channels[ci].top, &L.channels[ci].bottom})
                for (auto& e : *list) todo.emplace_back(&e, int64_t(ci));
        std::stable_sort(todo.begin(), todo.end(),
                         [](const auto& a, const auto& b) { return a.first->image < b.first->image; });
        for (size_t start = 0; start < todo.size(); start += size_t(chunk)) {
            const size_t end = std::min(todo.size(), start + size_t(chunk));
            std::vector<int64_t> idx;
            std::vector<std::array<int64_t, 3>> units;
            for (size_t i = start; i < end; ++i) {
                idx.push_back(todo[i].first->image);
                units.push_back({todo[i].second, todo[i].first->y, todo[i].first->x});
            }
            const auto boxes = gradient_boxes(model, L.name, data.batch(idx, pre), units);
            for (size_t i = start; i < end; ++i) todo[i].first->box = boxes[i - start];
        }
    }
}

}  // namespace top_patches_detail

}  // namespace convscope
