// The incremental engine on dense outputs, against the model run on whole occluded images:
// upsamplings (bilinear with and without align_corners, nearest, integer and other scales) run
// incrementally, and the weighted sums of the output (a region's mean logits) computed from the
// leaves of the linear tail equal the sums of the full output.
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "methods/incremental/engine.hpp"
#include "methods/incremental/plan.hpp"
#include "test_util.hpp"

namespace convscope {
namespace {

namespace inc = convscope::incremental;

// A small segmentation-like network on 3x24x30 inputs: a context path at half resolution,
// upsampled (bilinear, x2) and added to a skip branch, resampled by nearest neighbours (x1.5),
// minus half of the context path upsampled with align_corners to the same size. With
// `squash`, a sigmoid of a bilinear resize to 17x23 (scale in/out) ends the network instead.
Model dense_model(bool squash) {
    torch::jit::Module m("DenseNet");
    m.register_parameter("w1", randn({4, 3, 3, 3}, 5) * 0.4, false);
    m.register_parameter("w2", randn({4, 4, 3, 3}, 6) * 0.4, false);
    m.register_parameter("w3", randn({5, 4, 1, 1}, 7), false);
    m.register_parameter("w4", randn({5, 4, 1, 1}, 8), false);
    if (squash) {
        m.define(R"JIT(
def forward(self, x):
    a = torch.relu(torch.conv2d(x, self.w1, None, [1, 1], [1, 1]))
    c = torch.conv2d(torch.relu(torch.conv2d(torch.max_pool2d(a, [2, 2]), self.w2, None, [1, 1], [1, 1])), self.w3)
    return torch.sigmoid(torch.upsample_bilinear2d(c, [17, 23], False, None))
)JIT");
    } else {
        m.define(R"JIT(
def forward(self, x):
    a = torch.relu(torch.conv2d(x, self.w1, None, [1, 1], [1, 1]))
    c = torch.conv2d(torch.relu(torch.conv2d(torch.max_pool2d(a, [2, 2]), self.w2, None, [1, 1], [1, 1])), self.w3)
    y = torch.upsample_bilinear2d(c, None, False, [2.0, 2.0]) + torch.conv2d(a, self.w4)
    z = torch.upsample_nearest2d(y, None, [1.5, 1.5])
    return torch.sub(z, torch.upsample_bilinear2d(c, [36, 45], True, None), alpha=0.5)
)JIT");
    }
    m.eval();
    Model model = Model::from_module(m, ModelMeta{});
    model.set_input_shape({3, 24, 30});
    return model;
}

struct Windows {
    std::vector<int64_t> img, ys, xs;
};

// Windows of 5x6 at the corners, the borders and inside, over two images.
Windows windows() {
    return {{0, 1, 0, 1, 0, 1, 1}, {0, 0, 19, 19, 7, 10, 3}, {0, 24, 0, 24, 11, 2, 17}};
}

// The images with each window replaced by its patch, [B,C,H,W].
at::Tensor occluded(const at::Tensor& x, const at::Tensor& patches, const Windows& w) {
    std::vector<at::Tensor> out;
    for (size_t b = 0; b < w.img.size(); ++b) {
        at::Tensor c = x[w.img[b]].clone();
        c.slice(1, w.ys[b], w.ys[b] + 5).slice(2, w.xs[b], w.xs[b] + 6).copy_(patches[static_cast<int64_t>(b)]);
        out.push_back(c);
    }
    return torch::stack(out);
}

int count(const inc::Plan& p, inc::StepKind kind) {
    return static_cast<int>(std::count_if(p.steps.begin(), p.steps.end(), [&](const inc::Step& s) { return s.kind == kind; }));
}

TEST(IncrementalDense, UpsamplingsRunIncrementallyAndEqualTheModel) {
    for (bool squash : {false, true}) {
        SCOPED_TRACE(squash ? "sigmoid of a resize" : "linear tail");
        Model model = dense_model(squash);
        const inc::Plan plan = inc::make_plan(model, {3, 24, 30});
        EXPECT_EQ(count(plan, inc::StepKind::Resize), squash ? 1 : 3) << plan.note;
        EXPECT_NE(plan.note.find("no full recomputation"), std::string::npos) << plan.note;
        ASSERT_GE(plan.output_slot, 0);
        // The tail: three resizes, the sum and the difference; leaves: the context path's
        // logits and the skip branch. A sigmoid at the end is not linear: the output is the leaf.
        const int tail = static_cast<int>(std::count(plan.tail.begin(), plan.tail.end(), 1));
        EXPECT_EQ(tail, squash ? 0 : 5);
        EXPECT_EQ(plan.leaves.size(), squash ? 1u : 2u);
        if (squash) EXPECT_EQ(plan.leaves[0], plan.output_slot);

        const at::Tensor x = randn({2, 3, 24, 30}, 11);
        const Windows w = windows();
        const at::Tensor patches = randn({7, 3, 5, 6}, 12);
        const at::Tensor want = model.forward(occluded(x, patches, w));
        inc::Engine engine(model, plan, {});
        const at::Tensor clean = engine.set_images(x);
        expect_close(clean, model.forward(x), 1e-6, "clean outputs");
        expect_close(engine.run(patches, w.img, w.ys, w.xs), want, 1e-5, "occluded outputs");

        // Weighted sums of each channel over the map (a region's mean logits): from the leaves'
        // changes, as from the whole output.
        ASSERT_TRUE(engine.weighted_output());
        const at::Tensor weights = torch::rand({2, want.size(2), want.size(3)}) *
                                   (torch::rand({2, want.size(2), want.size(3)}) > 0.6).to(torch::kFloat);
        engine.set_output_weights(weights);
        const at::Tensor per_copy = weights.index_select(0, torch::tensor(w.img, torch::kLong)).unsqueeze(1);
        const at::Tensor sums = (want.to(torch::kDouble) * per_copy.to(torch::kDouble)).sum({2, 3});
        expect_close(engine.run_weighted(patches, w.img, w.ys, w.xs), sums, 1e-5, "weighted sums");
        // New images drop the weights (a caller's mistake: an invariant, not a user error).
        engine.set_images(x);
        EXPECT_THROW(engine.run_weighted(patches, w.img, w.ys, w.xs), InternalError);
    }
}

}  // namespace
}  // namespace convscope
