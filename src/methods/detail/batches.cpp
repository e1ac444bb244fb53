#include "methods/detail/batches.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <vector>

#include "convscope/runtime/model.hpp"

namespace convscope::detail {

at::Tensor forward_chunks(const Model& model, const at::Tensor& images, int64_t batch_size) {
    std::vector<at::Tensor> outs;
    for (int64_t first = 0; first < images.size(0); first += batch_size)
        outs.push_back(model.forward(images.slice(0, first, std::min(images.size(0), first + batch_size))));
    return torch::cat(outs, 0);
}

}  // namespace convscope::detail
