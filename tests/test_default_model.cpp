// The built-in model: a short training run on a slice of Fashion-MNIST gives a real classifier,
// the saved file is ordinary TorchScript that PyTorch in Python loads and runs with the same
// outputs, and convscope reads its layers and metadata back.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <fstream>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/io.hpp"
#include "test_util.hpp"

using namespace convscope;

TEST(DefaultModel, ShortTrainingLearnsAndLoadsInPython) {
    TempDir tmp;
    TrainOptions opts;
    opts.epochs = 1;
    opts.train_limit = 4000;
    opts.test_limit = 1000;
    opts.seed = 3;
    const std::string path = tmp / "model.pt";
    auto r = train_default_model(path, opts);
    // Chance is 10%; one pass over 4,000 images already gives a working classifier.
    EXPECT_GT(r.test_accuracy, 0.65);

    Model m = Model::load(path);
    EXPECT_EQ(m.input_shape(), (std::vector<int64_t>{1, 28, 28}));
    EXPECT_EQ(m.meta().class_names.size(), 10u);
    EXPECT_EQ(m.meta().class_names[9], "Ankle boot");
    EXPECT_EQ(m.conv_layer_names(), (std::vector<std::string>{"conv1", "conv2", "conv3", "conv4"}));
    EXPECT_EQ(m.penultimate_layer(), "relu5");
    EXPECT_EQ(m.layer("fc1").output_shape, (std::vector<int64_t>{128}));
    EXPECT_EQ(m.layer("pool2").rf.size_y, 16);  // 4 convs 3x3 and two 2x2 pools
    EXPECT_EQ(m.num_classes(), 10);

    // The accuracy recorded at training time is what evaluate_accuracy measures on the file.
    auto test = Dataset::open("fashion-mnist:test");
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < 1000; ++i) idx.push_back(i);
    EXPECT_NEAR(evaluate_accuracy(m, test, idx), r.test_accuracy, 1e-9);

    // PyTorch in Python loads the file and computes the same logits.
    auto input = test.batch({0, 1, 2, 3}, test.preprocess_for(m.input_shape(), m.meta().mean, m.meta().std));
    write_npy(tmp / "input.npy", input);
    const std::string script =
        "import sys, numpy as np, torch\n"
        "m = torch.jit.load(sys.argv[1]); m.eval()\n"
        "x = torch.from_numpy(np.load(sys.argv[2]))\n"
        "with torch.no_grad(): y = m(x)\n"
        "np.save(sys.argv[3], y.numpy())\n";
    {
        std::ofstream f(tmp / "run.py");
        f << script;
    }
    const std::string cmd = "/usr/bin/python3 " + (tmp / "run.py") + " " + path + " " + (tmp / "input.npy") +
                            " " + (tmp / "output.npy");
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    expect_close(read_npy(tmp / "output.npy"), m.forward(input), 1e-5, "python logits");
}

TEST(DefaultModel, TrainingIsSeeded) {
    TempDir tmp;
    TrainOptions opts;
    opts.epochs = 1;
    opts.train_limit = 512;
    opts.test_limit = 200;
    opts.seed = 7;
    auto a = train_default_model(tmp / "a.pt", opts);
    auto b = train_default_model(tmp / "b.pt", opts);
    EXPECT_EQ(a.test_accuracy, b.test_accuracy);
    Model ma = Model::load(tmp / "a.pt"), mb = Model::load(tmp / "b.pt");
    auto x = torch::randn({2, 1, 28, 28});
    EXPECT_TRUE(torch::equal(ma.forward(x), mb.forward(x)));
}

TEST(DefaultModel, BadTrainingOptions) {
    TempDir tmp;
    TrainOptions opts;
    opts.epochs = 0;
    expect_error([&] { train_default_model(tmp / "m.pt", opts); }, "--epochs");
    EXPECT_FALSE(std::filesystem::exists(tmp / "m.pt"));
}
