#!/usr/bin/env bash
# The main job: set up, build, train the default model once (cached), then describe it and
# report its test accuracy on Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/convscope train --out results/default-model
./build/convscope describe --data fashion-mnist:test
