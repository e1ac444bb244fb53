#pragma once
// Helpers shared by the tests: fixture paths, tensor comparison, expected errors, temp folders.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <string>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"

namespace convscope {

// Folder made by tests/fixtures/make_fixtures.py (build/fixtures).
// Standard normal values [shape] from their own generator seeded with seed (reproducible).
inline at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    return torch::randn(shape, gen, torch::kFloat);
}

inline std::string fixtures_dir() { return CONVSCOPE_FIXTURES; }
inline std::string fixture(const std::string& rel) { return std::string(CONVSCOPE_FIXTURES) + "/" + rel; }

// The LeNet fixture (1x28x28 inputs, 10 classes) with its input shape set.
inline Model load_lenet() {
    Model m = Model::load(fixture("lenet_scripted.pt"));
    m.set_input_shape({1, 28, 28});
    return m;
}

// |a - b| <= tol * max(max|b|, 0.01) everywhere, with the same shape: relative to the reference's
// magnitude (gradients are often small), with a floor for references that are nearly zero.
inline void expect_close(const at::Tensor& a, const at::Tensor& b, double tol, const std::string& what) {
    ASSERT_TRUE(a.defined()) << what;
    ASSERT_EQ(a.sizes(), b.sizes()) << what;
    const auto af = a.to(torch::kDouble), bf = b.to(torch::kDouble);
    const double scale = std::max(0.01, bf.abs().max().item<double>());
    const double err = (af - bf).abs().max().item<double>();
    EXPECT_LE(err, tol * scale) << what << ": max abs difference " << err;
}

// Runs f and expects a convscope::Error whose message contains `needle`.
inline void expect_error(const std::function<void()>& f, const std::string& needle) {
    try {
        f();
        ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
            << "message: " << e.what() << "\nexpected to contain: " << needle;
    }
}

// A fresh temporary folder removed at the end of the scope.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        std::string name = std::string("convscope-") + (info ? info->test_suite_name() : "t") + "-" +
                           (info ? info->name() : "x") + "-" + std::to_string(::getpid());
        for (auto& c : name)
            if (c == '/') c = '_';
        path = std::filesystem::temp_directory_path() / name;
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    std::string operator/(const std::string& rel) const { return (path / rel).string(); }
};

}  // namespace convscope
