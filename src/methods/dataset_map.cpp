// Reading a dataset map back from an `embed` output folder (see methods/dataset_map.hpp).

#include "convscope/methods/dataset_map.hpp"

#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/json.hpp"

namespace convscope {
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot read " + path.string() + ": check its permissions");
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// One integer field of a CSV row, up to the next comma or the line's end.
int64_t csv_int(const char*& p, const char* end, const std::string& where) {
    int64_t v = 0;
    const auto r = std::from_chars(p, end, v);
    if (r.ec != std::errc() || (r.ptr < end && *r.ptr != ',' && *r.ptr != '\n' && *r.ptr != '\r'))
        throw Error(where + ": expected an integer; the file is not what `convscope embed` writes. "
                            "Make the map again with convscope embed --out FOLDER");
    p = r.ptr;
    return v;
}

}  // namespace

DatasetMap read_dataset_map(const std::string& folder, const Dataset& data) {
    const fs::path dir(folder);
    if (!fs::is_directory(dir))
        throw Error("map folder '" + folder + "' does not exist: pass the --out folder of convscope embed");
    DatasetMap m;
    m.source = folder;
    const fs::path npy = dir / "embedding.npy", csv = dir / "embedding.csv", manifest = dir / "manifest.json";
    for (const fs::path& p : {npy, csv})
        if (!fs::exists(p))
            throw Error("map folder '" + folder + "' has no " + p.filename().string() +
                        ": it is not a convscope embed output (make one with convscope embed --out " + folder + ")");

    if (fs::exists(manifest)) {
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(slurp(manifest));
        } catch (const nlohmann::json::exception& e) {
            throw Error(manifest.string() + " is not valid JSON (" + e.what() +
                        "): make the map again with convscope embed");
        }
        const nlohmann::json o = j.value("options", nlohmann::json::object());
        if (o.is_object()) {
            if (o.contains("layer") && o["layer"].is_string()) m.layer = o["layer"].get<std::string>();
            if (o.contains("data_sha256") && o["data_sha256"].is_string() &&
                o["data_sha256"].get<std::string>() != data.hash())
                throw Error("the map in '" + folder + "' was made from other data (" +
                            o.value("data", std::string("?")) + ") than the data given (" + data.spec() +
                            "): pass the data the map was made from, or make the map of this data with "
                            "convscope embed --data " + data.spec());
        }
    }

    const at::Tensor xy = map_npy(npy.string());  // float32 [N,D], checked against its size
    if (xy.dim() != 2 || xy.size(1) != 2)
        throw Error(npy.string() + " must hold [N,2] coordinates, got [" + std::to_string(xy.size(0)) + "," +
                    std::to_string(xy.dim() > 1 ? xy.size(1) : 0) + "]: make the map again with convscope embed");
    const int64_t n = xy.size(0);
    if (n < 1) throw Error(npy.string() + " holds no points: make the map of at least one item");
    if (n > int64_t(INT32_MAX) / 16)
        throw Error(npy.string() + " holds " + std::to_string(n) + " points; a map takes at most " +
                    std::to_string(INT32_MAX / 16) + ": split the data with --indices");
    const float* p = xy.data_ptr<float>();
    m.x.resize(size_t(n));
    m.y.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
        const float a = p[2 * i], b = p[2 * i + 1];
        if (!std::isfinite(a) || !std::isfinite(b))
            throw Error(npy.string() + ": point " + std::to_string(i) +
                        " has a non-finite coordinate: make the map again (a t-SNE that diverged, try a smaller --perplexity)");
        m.x[size_t(i)] = a;
        m.y[size_t(i)] = b;
    }

    // embedding.csv: a header, then "index,label,x,y" per point in the order of embedding.npy.
    const std::string text = slurp(csv);
    const char* c = text.data();
    const char* end = c + text.size();
    const char* nl = static_cast<const char*>(std::memchr(c, '\n', text.size()));
    if (!nl || std::string(c, nl).rfind("index,label", 0) != 0)
        throw Error(csv.string() + " does not start with the header index,label,x,y: make the map again with convscope embed");
    c = nl + 1;
    m.items.reserve(size_t(n));
    m.labels.reserve(size_t(n));
    const int64_t size = data.size();
    while (c < end) {
        if (*c == '\n' || *c == '\r') { ++c; continue; }
        const std::string where = csv.string() + " row " + std::to_string(m.items.size() + 1);
        if (int64_t(m.items.size()) == n)
            throw Error(csv.string() + " has more rows than embedding.npy's " + std::to_string(n) +
                        " points: the two files are from different runs; make the map again");
        const int64_t item = csv_int(c, end, where);
        if (c >= end || *c != ',') throw Error(where + ": expected index,label,x,y");
        ++c;
        const int64_t label = csv_int(c, end, where);
        if (item < 0 || item >= size)
            throw Error(where + ": item " + std::to_string(item) + " is outside the data given (" + data.spec() +
                        ", " + std::to_string(size) + " items): pass the data the map was made from");
        if (label < -1 || label > INT32_MAX) throw Error(where + ": label " + std::to_string(label) + " is not a class number");
        m.items.push_back(int32_t(item));
        m.labels.push_back(int32_t(label));
        const void* next = std::memchr(c, '\n', size_t(end - c));
        c = next ? static_cast<const char*>(next) + 1 : end;
    }
    if (int64_t(m.items.size()) != n)
        throw Error(csv.string() + " has " + std::to_string(m.items.size()) + " rows but embedding.npy has " +
                    std::to_string(n) + " points: the file is truncated or from another run; make the map again");
    return m;
}

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the map's bytes are written in memory order");

std::string dataset_map_bytes(const DatasetMap& m) {
    const size_t n = m.x.size();
    std::string out(16 * n, '\0');
    char* p = out.data();
    std::memcpy(p, m.x.data(), 4 * n);
    std::memcpy(p + 4 * n, m.y.data(), 4 * n);
    std::memcpy(p + 8 * n, m.labels.data(), 4 * n);
    std::memcpy(p + 12 * n, m.items.data(), 4 * n);
    return out;
}

}  // namespace convscope
