// .npy arrays: float32 N,C,H,W used as model inputs as they are, or uint8 N,H,W / N,H,W,C
// pixels scaled to [0,1].
#include <torch/torch.h>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/strings.hpp"
#include "runtime/sources/sources.hpp"

namespace convscope::sources {

namespace {

class NpyArray final : public DataSource {
public:
    at::Tensor data;
    bool float_as_is = false;
    std::vector<std::pair<std::string, std::string>> hashed;

    std::string kind() const override { return "npy"; }
    int64_t size() const override { return data.size(0); }
    bool as_is() const override { return float_as_is; }
    at::Tensor raw(int64_t i) const override {
        if (float_as_is) return data[i].clone();
        at::Tensor item = data[i];
        if (item.dim() == 2) return item.unsqueeze(0).to(torch::kFloat).div_(255.0);
        item = item.permute({2, 0, 1});
        if (item.size(0) == 4) item = item.slice(0, 0, 3);  // drop alpha
        return item.to(torch::kFloat).div_(255.0).contiguous();
    }
    std::vector<std::pair<std::string, std::string>> hashed_files() const override { return hashed; }
};

}  // namespace

std::unique_ptr<DataSource> open_npy(const fs::path& path) {
    auto d = std::make_unique<NpyArray>();
    at::Tensor a = read_npy(path.string());
    const auto shape = a.sizes().vec();
    const std::string supported =
        "; supported: N,C,H,W float32 (used as is) or N,H,W / N,H,W,C uint8 (scaled to [0,1]); "
        "convert with a.astype(numpy.float32) or a.astype(numpy.uint8)";
    if (a.scalar_type() == torch::kFloat && a.dim() == 4) {
        d->float_as_is = true;
    } else if (a.scalar_type() == torch::kByte && a.dim() == 3) {
    } else if (a.scalar_type() == torch::kByte && a.dim() == 4) {
        const int64_t c = a.size(3);
        if (c != 1 && c != 3 && c != 4) {
            throw Error("cannot use " + path.string() + ": uint8 N,H,W,C data has C = " +
                        std::to_string(c) + "; C must be 1, 3 or 4 (RGBA, alpha dropped)");
        }
    } else {
        throw Error("cannot use " + path.string() + ": array of " + numpy_name(a.scalar_type()) +
                    " with shape " + detail::shape_str(shape) + supported);
    }
    if (a.size(0) == 0) throw Error("the array " + path.string() + " holds no items (N = 0)");
    if (a.numel() == 0) throw Error("the array " + path.string() + " has a dimension of size 0");
    d->data = a;
    d->hashed.emplace_back(path.string(), path.filename().string());
    return d;
}

}  // namespace convscope::sources
