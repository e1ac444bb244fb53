#include "convscope/runtime/receptive_field.hpp"

#include <algorithm>

namespace convscope {

Box unit_box(const ReceptiveField& rf, int64_t y, int64_t x, int64_t h, int64_t w) {
    if (rf.kind != ReceptiveField::Kind::Exact) return Box{0, 0, h, w};
    Box b;
    b.y0 = std::clamp<int64_t>(y * rf.stride_y - rf.pad_y, 0, h);
    b.x0 = std::clamp<int64_t>(x * rf.stride_x - rf.pad_x, 0, w);
    b.y1 = std::clamp<int64_t>(y * rf.stride_y - rf.pad_y + rf.size_y, 0, h);
    b.x1 = std::clamp<int64_t>(x * rf.stride_x - rf.pad_x + rf.size_x, 0, w);
    return b;
}

}  // namespace convscope
