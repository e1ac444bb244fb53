#!/usr/bin/env bash
# Set up, build, make the test fixtures (PyTorch in Python), run every test through CTest, then
# the unit tests again under AddressSanitizer and UndefinedBehaviorSanitizer (scripts/sanitize.sh,
# its own clang build in build-asan) and each fuzz target for a fixed number of inputs (scripts/fuzz.sh all ci, the same build-asan).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
/usr/bin/python3 tests/fixtures/make_fixtures.py build/fixtures
(cd build && ctest --output-on-failure -j 2)
bash scripts/sanitize.sh
bash scripts/fuzz.sh all ci
