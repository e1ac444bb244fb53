#!/usr/bin/env bash
# The main job: set up, build, train the default model once (cached), describe it with its test
# accuracy on Fashion-MNIST, and write the HTML report (results/report/index.html; open it in a
# browser, no server needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/convscope train --out results/default-model
./build/convscope describe --data fashion-mnist:test
./build/convscope report --data fashion-mnist:test --out results/report
