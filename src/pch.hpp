#pragma once
// Precompiled header: the heavy third-party headers, parsed once per build.
#include <torch/script.h>
#include <torch/torch.h>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <nlohmann/json.hpp>
