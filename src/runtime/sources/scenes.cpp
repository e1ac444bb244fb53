// The built-in segmentation model's held-out scenes as data ("fashion-mnist-scenes"): 1,000
// scenes of 64x64 pixels made from Fashion-MNIST's test split (segment_scenes, seed 1000, the
// scenes `train --arch segment` measures its mean IoU on with the default seed).
#include <torch/torch.h>

#include "convscope/runtime/default_model.hpp"
#include "runtime/sources/sources.hpp"

namespace convscope::sources {

namespace {

class Scenes final : public DataSource {
public:
    at::Tensor images;  // [N,1,64,64] in [0,1]
    std::vector<std::pair<std::string, std::string>> hashed;

    std::string kind() const override { return "fashion-mnist-scenes"; }
    int64_t size() const override { return images.size(0); }
    at::Tensor raw(int64_t i) const override { return images[i].clone(); }
    std::vector<std::pair<std::string, std::string>> hashed_files() const override { return hashed; }
};

}  // namespace

std::unique_ptr<DataSource> open_scenes() {
    auto s = std::make_unique<Scenes>();
    s->images = segment_scenes(1000, 1000).first;
    s->hashed = {{fashion_mnist_dir() + "/t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"}};
    return s;
}

}  // namespace convscope::sources
