// Tests for io: atomic writes, NPY (round trips and numpy compatibility), JSON, CSV, SHA-256
// (FIPS 180-4 test vectors and Python's hashlib) and the output folder's manifest.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <opencv2/core/version.hpp>
#include <random>
#include <regex>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "runtime/detail/sha256.hpp"

namespace fs = std::filesystem;
using convscope::Error;

namespace {

// A fresh folder under the system temp dir, removed with its contents at the end of the test.
class TempDir {
public:
    TempDir() {
        static std::atomic<int> counter{0};
        std::random_device rd;
        path_ =
            fs::temp_directory_path() / ("convscope_io_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(counter++) + "_" + std::to_string(rd()));
        fs::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    std::string operator/(const std::string& name) const { return (path_ / name).string(); }
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), std::streamsize(bytes.size()));
}

std::vector<std::string> list_names(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

// Runs a Python snippet with the system numpy; returns its exit status.
int run_python(const std::string& code, const TempDir& dir) {
    const std::string script = dir / "snippet.py";
    write_bytes(script, code);
    return std::system(("/usr/bin/python3 " + script).c_str());
}

bool have_numpy() {
    static const bool ok = std::system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") == 0;
    return ok;
}

#define EXPECT_ERROR_WITH(statement, ...)                                      \
    do {                                                                       \
        try {                                                                  \
            statement;                                                         \
            ADD_FAILURE() << "expected convscope::Error from " #statement;     \
        } catch (const convscope::Error& e) {                                  \
            for (const char* word : {__VA_ARGS__}) {                           \
                EXPECT_NE(std::string(e.what()).find(word), std::string::npos) \
                    << "message lacks '" << word << "': " << e.what();         \
            }                                                                  \
        }                                                                      \
    } while (0)

}  // namespace

// --- SHA-256 ---------------------------------------------------------------------------------

TEST(IoSha256, KnownVectors) {
    // FIPS 180-2 appendix B and the empty message.
    EXPECT_EQ(convscope::sha256_hex(""),
              "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(convscope::sha256_hex("abc"),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(convscope::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    EXPECT_EQ(convscope::sha256_hex(std::string(1000000, 'a')),
              "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    // 55, 56 and 64 bytes: the padding boundaries.
    EXPECT_EQ(convscope::sha256_hex(std::string(55, 'a')),
              "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
    EXPECT_EQ(convscope::sha256_hex(std::string(56, 'a')),
              "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
    EXPECT_EQ(convscope::sha256_hex(std::string(64, 'a')),
              "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

TEST(IoSha256, IncrementalEqualsOneShotAndHashlib) {
    std::mt19937 rng(7);
    std::string data(300000, '\0');
    for (char& c : data) c = char(rng() & 0xff);
    convscope::detail::Sha256 h;
    size_t pos = 0, step = 1;
    while (pos < data.size()) {  // odd chunk sizes cross block boundaries everywhere
        size_t n = std::min(step, data.size() - pos);
        h.update(data.data() + pos, n);
        pos += n;
        step = step * 3 % 1000 + 1;
    }
    const std::string incremental = h.hex_digest();
    EXPECT_EQ(incremental, convscope::sha256_hex(data));

    TempDir dir;
    write_bytes(dir / "blob.bin", data);
    EXPECT_EQ(convscope::sha256_file(dir / "blob.bin"), incremental);
    if (!have_numpy()) GTEST_SKIP() << "/usr/bin/python3 not available";
    const std::string code =
        "import hashlib,sys\n"
        "d=open(r'" +
        dir / "blob.bin" +
        "','rb').read()\n"
        "sys.exit(0 if hashlib.sha256(d).hexdigest()=='" +
        incremental + "' else 1)\n";
    EXPECT_EQ(run_python(code, dir), 0);
}

TEST(IoSha256, MissingFileNamesIt) {
    EXPECT_ERROR_WITH(convscope::sha256_file("/nonexistent/convscope/model.pt"),
                      "/nonexistent/convscope/model.pt");
}

// --- atomic files ----------------------------------------------------------------------------

TEST(IoAtomic, WritesAndReplacesWithoutLeavingTempFiles) {
    TempDir dir;
    const std::string target = dir / "out.txt";
    convscope::write_file_atomic(target, "first");
    EXPECT_EQ(convscope::read_file(target), "first");
    convscope::write_file_atomic(target, std::string("second\0with nul", 15));
    EXPECT_EQ(convscope::read_file(target), std::string("second\0with nul", 15));
    EXPECT_EQ(list_names(dir.path()), std::vector<std::string>{"out.txt"});
}

TEST(IoAtomic, MissingFolderFailsCleanly) {
    TempDir dir;
    const std::string target = dir / "missing/out.txt";
    EXPECT_ERROR_WITH(convscope::write_file_atomic(target, "data"), "does not exist",
                      target.c_str());
    EXPECT_FALSE(fs::exists(target));
    EXPECT_TRUE(list_names(dir.path()).empty());
}

TEST(IoAtomic, RenameFailureRemovesTempFile) {
    TempDir dir;
    // The target is a non-empty folder: writing the temp file works, the rename fails.
    fs::create_directories(dir.path() / "taken" / "inner");
    EXPECT_ERROR_WITH(convscope::write_file_atomic(dir / "taken", "data"), "cannot write");
    EXPECT_EQ(list_names(dir.path()), std::vector<std::string>{"taken"});
    EXPECT_TRUE(fs::is_directory(dir.path() / "taken" / "inner"));
}

TEST(IoAtomic, ReadFileErrors) {
    TempDir dir;
    EXPECT_ERROR_WITH(convscope::read_file(dir / "nope.txt"), "nope.txt");
    EXPECT_ERROR_WITH(convscope::read_file(dir.path().string()), "folder");
    write_bytes(dir / "empty", "");
    EXPECT_EQ(convscope::read_file(dir / "empty"), "");
}

// --- NPY -------------------------------------------------------------------------------------

TEST(IoNpy, RoundTripEveryDtype) {
    TempDir dir;
    const std::vector<at::ScalarType> types = {torch::kFloat, torch::kDouble, torch::kLong,
                                               torch::kInt,   torch::kByte,   torch::kChar};
    for (auto type : types) {
        for (const std::vector<int64_t>& shape :
             std::vector<std::vector<int64_t>>{{}, {5}, {2, 3, 4}, {3, 0, 2}}) {
            const int64_t numel = c10::multiply_integers(shape);
            at::Tensor t =
                (torch::arange(numel, torch::kDouble) * (type == torch::kChar ? -1.5 : 1.5) + 1)
                    .reshape(shape)
                    .to(type);
            const std::string path = dir / "a.npy";
            convscope::write_npy(path, t);
            at::Tensor back = convscope::read_npy(path);
            EXPECT_EQ(back.scalar_type(), type) << c10::toString(type);
            EXPECT_EQ(back.sizes(), t.sizes());
            EXPECT_TRUE(torch::equal(back, t)) << c10::toString(type);
        }
    }
    at::Tensor flags = torch::tensor({true, false, true, true}).reshape({2, 2});
    convscope::write_npy(dir / "b.npy", flags);
    at::Tensor back = convscope::read_npy(dir / "b.npy");
    EXPECT_EQ(back.scalar_type(), torch::kBool);
    EXPECT_TRUE(torch::equal(back, flags));
    // Non-contiguous input is written in logical (C) order.
    at::Tensor tr = torch::arange(6, torch::kFloat).reshape({2, 3}).t();
    convscope::write_npy(dir / "c.npy", tr);
    EXPECT_TRUE(torch::equal(convscope::read_npy(dir / "c.npy"), tr.contiguous()));
}

TEST(IoNpy, HeaderLayoutMatchesNumpy) {
    const std::string bytes = convscope::npy_bytes(torch::zeros({2, 3}, torch::kFloat));
    ASSERT_GE(bytes.size(), 10u);
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
    const size_t header_len = uint8_t(bytes[8]) | size_t(uint8_t(bytes[9])) << 8;
    EXPECT_EQ((10 + header_len) % 64, 0u);
    EXPECT_EQ(bytes.size(), 10 + header_len + 6 * 4);
    const std::string header = bytes.substr(10, header_len);
    EXPECT_EQ(header.back(), '\n');
    EXPECT_NE(header.find("'descr': '<f4'"), std::string::npos) << header;
    EXPECT_NE(header.find("'shape': (2, 3)"), std::string::npos) << header;
    EXPECT_NE(header.find("'fortran_order': False"), std::string::npos) << header;
    // numpy writes 1-D shapes as (n,).
    const std::string one = convscope::npy_bytes(torch::zeros({4}, torch::kLong));
    EXPECT_NE(one.find("'shape': (4,)"), std::string::npos);
    EXPECT_NE(one.find("'<i8'"), std::string::npos);
    EXPECT_NE(convscope::npy_bytes(torch::zeros({1}, torch::kByte)).find("'|u1'"),
              std::string::npos);
    EXPECT_ERROR_WITH(convscope::npy_bytes(torch::zeros({2}, torch::kHalf)), "float32");
}

TEST(IoNpy, ReadsWhatNumpyWrites) {
    if (!have_numpy()) GTEST_SKIP() << "/usr/bin/python3 with numpy not available";
    TempDir dir;
    const std::string code =
        "import numpy as np\n"
        "d=r'" +
        dir.path().string() +
        "'\n"
        "base=np.arange(24).reshape(2,3,4)\n"
        "for name in ['float32','float64','int64','int32','uint8','int8']:\n"
        "    np.save(d+'/'+name+'.npy', (base*3-7 if name not in ('uint8',) else "
        "base*3).astype(name))\n"
        "np.save(d+'/bool.npy', (base%3==0))\n"
        "np.save(d+'/scalar.npy', np.float32(2.5))\n"
        "np.save(d+'/v2.npy', np.arange(5, dtype='<f8'))\n"
        "np.save(d+'/fortran.npy', np.asfortranarray(base.astype('float32')))\n"
        "np.save(d+'/big.npy', base.astype('>f4'))\n"
        "np.save(d+'/complex.npy', base.astype('<c8'))\n"
        "np.save(d+'/empty.npy', np.zeros((0,3), dtype='float32'))\n";
    ASSERT_EQ(run_python(code, dir), 0);
    at::Tensor base = torch::arange(24, torch::kLong).reshape({2, 3, 4});
    const std::vector<std::pair<std::string, at::ScalarType>> types = {
        {"float32", torch::kFloat}, {"float64", torch::kDouble}, {"int64", torch::kLong},
        {"int32", torch::kInt},     {"uint8", torch::kByte},     {"int8", torch::kChar}};
    for (const auto& [name, type] : types) {
        at::Tensor t = convscope::read_npy(dir / (name + ".npy"));
        at::Tensor expect = name == "uint8" ? base * 3 : base * 3 - 7;
        EXPECT_EQ(t.scalar_type(), type) << name;
        EXPECT_TRUE(torch::equal(t, expect.to(type))) << name;
    }
    at::Tensor b = convscope::read_npy(dir / "bool.npy");
    EXPECT_EQ(b.scalar_type(), torch::kBool);
    EXPECT_TRUE(torch::equal(b, base.remainder(3).eq(0)));
    at::Tensor s = convscope::read_npy(dir / "scalar.npy");
    EXPECT_EQ(s.dim(), 0);
    EXPECT_EQ(s.item<float>(), 2.5f);
    EXPECT_EQ(convscope::read_npy(dir / "empty.npy").sizes(), (std::vector<int64_t>{0, 3}));
    EXPECT_TRUE(
        torch::equal(convscope::read_npy(dir / "v2.npy"), torch::arange(5, torch::kDouble)));

    EXPECT_ERROR_WITH(convscope::read_npy(dir / "fortran.npy"), "Fortran", "fortran.npy");
    EXPECT_ERROR_WITH(convscope::read_npy(dir / "big.npy"), "big-endian", "big.npy");
    EXPECT_ERROR_WITH(convscope::read_npy(dir / "complex.npy"), "'<c8'", "not supported",
                      "complex.npy");
}

TEST(IoNpy, NumpyReadsWhatWeWrite) {
    if (!have_numpy()) GTEST_SKIP() << "/usr/bin/python3 with numpy not available";
    TempDir dir;
    convscope::write_npy(dir / "f.npy", torch::arange(24, torch::kFloat).reshape({2, 3, 4}) * 0.5);
    convscope::write_npy(dir / "l.npy", torch::arange(-3, 3, torch::kLong));
    convscope::write_npy(dir / "u.npy", torch::arange(250, 256, torch::kLong).to(torch::kByte));
    convscope::write_npy(dir / "b.npy", torch::tensor({true, false}));
    convscope::write_npy(dir / "s.npy", torch::tensor(1.25, torch::kDouble));
    const std::string code =
        "import numpy as np\n"
        "d=r'" +
        dir.path().string() +
        "'\n"
        "f=np.load(d+'/f.npy'); assert f.dtype==np.float32 and f.shape==(2,3,4)\n"
        "assert (f==np.arange(24,dtype=np.float32).reshape(2,3,4)*0.5).all()\n"
        "l=np.load(d+'/l.npy'); assert l.dtype==np.int64 and (l==np.arange(-3,3)).all()\n"
        "u=np.load(d+'/u.npy'); assert u.dtype==np.uint8 and list(u)==[250,251,252,253,254,255]\n"
        "b=np.load(d+'/b.npy'); assert b.dtype==np.bool_ and list(b)==[True,False]\n"
        "s=np.load(d+'/s.npy'); assert s.shape==() and s==1.25\n";
    EXPECT_EQ(run_python(code, dir), 0);
}

TEST(IoNpy, RejectsDamagedFiles) {
    TempDir dir;
    const std::string good = convscope::npy_bytes(torch::arange(100, torch::kFloat));

    write_bytes(dir / "cut.npy", good.substr(0, good.size() - 10));
    EXPECT_ERROR_WITH(convscope::read_npy(dir / "cut.npy"), "truncated", "cut.npy");

    write_bytes(dir / "header_cut.npy", good.substr(0, 40));
    EXPECT_ERROR_WITH(convscope::read_npy(dir / "header_cut.npy"), "truncated");

    // A header that claims 10^15 floats on a file of a few bytes: must fail, not allocate.
    std::string liar = good;
    const size_t pos = liar.find("(100,)");
    liar.replace(pos, 6, "(100000, 100000, 100000)");
    liar.erase(liar.find('\n') - 18, 18);  // keep the header length the same
    write_bytes(dir / "liar.npy", liar);
    EXPECT_ERROR_WITH(convscope::read_npy(dir / "liar.npy"), "truncated",
                      "(100000, 100000, 100000)");

    // Dimensions whose product overflows 64 bits.
    std::string huge = good;
    huge.replace(huge.find("(100,)"), 6, "(99999999999, 99999999999, 99999999999)");
    huge.erase(huge.find('\n') - 33, 33);
    write_bytes(dir / "huge.npy", huge);
    EXPECT_ERROR_WITH(convscope::read_npy(dir / "huge.npy"), "truncated");

    // Found by fuzz_npy: an empty array (a size of 0) whose other sizes overflow its strides;
    // LibTorch refused it with its own exception.
    std::string empty = good;
    empty.replace(empty.find("(100,)"), 6, "(0, 99999999999, 99999999999)");
    empty.erase(empty.find('\n') - 24, 24);
    write_bytes(dir / "empty.npy", empty);
    EXPECT_ERROR_WITH(convscope::read_npy(dir / "empty.npy"), "which no array can have", "(0, 99999999999, 99999999999)");
    EXPECT_ERROR_WITH(convscope::read_npy(std::string(CONVSCOPE_SOURCE_DIR) + "/fuzz/corpus/npy/regression-huge-empty-shape"),
                      "which no array can have");

    write_bytes(dir / "magic.npy", "PK\x03\x04 this is a zip");
    EXPECT_ERROR_WITH(convscope::read_npy(dir / "magic.npy"), "not an NPY file", "magic.npy");

    std::string garbage = good;
    garbage.replace(garbage.find("'descr'"), 7, "[descr]");
    write_bytes(dir / "garbage.npy", garbage);
    EXPECT_ERROR_WITH(convscope::read_npy(dir / "garbage.npy"), "bad NPY header");

    EXPECT_ERROR_WITH(convscope::read_npy(dir / "missing.npy"), "missing.npy");
}

TEST(IoNpy, HeaderParserAcceptsVariants) {
    // Key order, double quotes, no trailing comma, extra spaces: all valid Python dicts.
    TempDir dir;
    std::string header = "{\"shape\": ( 2 ,3 ), \"fortran_order\":False,'descr':'<i4'}";
    const size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::string bytes("\x93NUMPY\x01\x00", 8);
    bytes += char(header.size() & 0xff);
    bytes += char(header.size() >> 8);
    bytes += header;
    at::Tensor t = torch::arange(6, torch::kInt);
    bytes.append(static_cast<const char*>(t.data_ptr()), 24);
    write_bytes(dir / "v.npy", bytes);
    EXPECT_TRUE(torch::equal(convscope::read_npy(dir / "v.npy"), t.reshape({2, 3})));
}

// --- JSON, CSV -------------------------------------------------------------------------------

TEST(IoJsonCsv, JsonIsPrettyAndRoundTrips) {
    TempDir dir;
    nlohmann::json j = {{"name", "conv1"}, {"values", {1, 2.5, -3}}, {"nested", {{"ok", true}}}};
    convscope::write_json(dir / "a.json", j);
    const std::string text = convscope::read_file(dir / "a.json");
    EXPECT_EQ(nlohmann::json::parse(text), j);
    EXPECT_NE(text.find("\n  \""), std::string::npos) << "not indented: " << text;
    EXPECT_EQ(text.back(), '\n');
}

TEST(IoJsonCsv, CsvQuotesWhereNeeded) {
    TempDir dir;
    convscope::write_csv(dir / "t.csv", {"index", "label", "note"},
                         {{"0", "Ankle boot", "plain"},
                          {"1", "T-shirt/top", "a, b"},
                          {"2", "say \"hi\"", "line\nbreak"}});
    EXPECT_EQ(convscope::read_file(dir / "t.csv"),
              "index,label,note\n"
              "0,Ankle boot,plain\n"
              "1,T-shirt/top,\"a, b\"\n"
              "2,\"say \"\"hi\"\"\",\"line\nbreak\"\n");
    if (!have_numpy()) return;
    // Python's csv module reads the same fields back.
    const std::string code =
        "import csv\n"
        "rows=list(csv.reader(open(r'" +
        dir / "t.csv" +
        "', newline='')))\n"
        "assert rows[2]==['1','T-shirt/top','a, b'], rows\n"
        "assert rows[3]==['2','say \"hi\"','line\\nbreak'], rows\n";
    EXPECT_EQ(run_python(code, dir), 0);
}

// --- OutputDir -------------------------------------------------------------------------------

TEST(IoOutputDir, ManifestListsEverything) {
    TempDir dir;
    const std::string out = dir / "a/b/out";
    convscope::OutputDir od(out);
    EXPECT_TRUE(fs::is_directory(out));
    const std::string png = od.file("maps/conv1/0.png", "activation map of conv1 channel 0");
    EXPECT_EQ(png, (fs::path(out) / "maps/conv1/0.png").string());
    EXPECT_TRUE(fs::is_directory(fs::path(out) / "maps/conv1"));
    convscope::write_file_atomic(png, "png");
    const std::string npy = od.file("acts.npy", "activations [N,C,H,W] float32");
    convscope::write_npy(npy, torch::zeros({1}));
    od.file("acts.npy", "activations [N,C,H,W] float32, rewritten");  // recorded once

    convscope::write_file_atomic(dir / "model.pt", "weights");
    const std::string model_hash = convscope::sha256_file(dir / "model.pt");
    od.set_command("convscope activations --layer conv1", {{"layer", "conv1"}, {"top", 5}},
                   dir / "model.pt", model_hash);
    od.write_manifest();

    const auto m = nlohmann::json::parse(convscope::read_file(out + "/manifest.json"));
    EXPECT_EQ(m["command"], "convscope activations --layer conv1");
    EXPECT_EQ(m["options"], (nlohmann::json{{"layer", "conv1"}, {"top", 5}}));
    EXPECT_EQ(m["model"]["path"], dir / "model.pt");
    EXPECT_EQ(m["model"]["sha256"], convscope::sha256_hex("weights"));
    EXPECT_EQ(m["versions"]["convscope"], CONVSCOPE_VERSION);
    EXPECT_EQ(m["versions"]["libtorch"], TORCH_VERSION);
    EXPECT_EQ(m["versions"]["opencv"], CV_VERSION);
    ASSERT_EQ(m["files"].size(), 2u);
    EXPECT_EQ(m["files"][0]["path"], "maps/conv1/0.png");
    EXPECT_EQ(m["files"][0]["meaning"], "activation map of conv1 channel 0");
    EXPECT_EQ(m["files"][1]["path"], "acts.npy");
    EXPECT_EQ(m["files"][1]["meaning"], "activations [N,C,H,W] float32, rewritten");
    EXPECT_TRUE(std::regex_match(m["created"].get<std::string>(),
                                 std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")))
        << m["created"];
}

TEST(IoOutputDir, RejectsPathsOutsideAndFiles) {
    TempDir dir;
    convscope::OutputDir od(dir / "out");
    EXPECT_ERROR_WITH(od.file("../escape.txt", "x"), "..");
    EXPECT_ERROR_WITH(od.file("/etc/passwd", "x"), "relative");
    convscope::write_file_atomic(dir / "plain", "x");
    EXPECT_ERROR_WITH(convscope::OutputDir(dir / "plain"), "is a file");
    // A manifest without set_command is still valid JSON with empty fields.
    od.write_manifest();
    const auto m = nlohmann::json::parse(convscope::read_file(dir / "out/manifest.json"));
    EXPECT_EQ(m["command"], "");
    EXPECT_TRUE(m["files"].empty());
}

// Rows written as they come make numpy's file; nothing shows under the name before finish().
TEST(NpyStream, RowsWrittenInBlocksMakeTheArrayAndAMapReadsIt) {
    TempDir dir;
    const std::string path = dir / "rows.npy";
    const at::Tensor a = torch::arange(0, 35, torch::kFloat).reshape({7, 5}).div(3.0);
    {
        convscope::NpyRowWriter w(path, 7, 5);
        w.write(a.narrow(0, 0, 3));
        EXPECT_FALSE(fs::exists(path));
        w.write(a.narrow(0, 3, 4).to(torch::kDouble));  // stored as float32
        w.finish();
    }
    EXPECT_EQ(convscope::read_file(path), convscope::npy_bytes(a));
    const at::Tensor m = convscope::map_npy(path);
    EXPECT_TRUE(torch::equal(m, a));
    m.mul_(2);  // copy-on-write: the file does not change
    EXPECT_TRUE(torch::equal(convscope::read_npy(path), a));
    // An empty array maps too.
    convscope::write_npy(dir / "empty.npy", torch::zeros({0, 4}));
    EXPECT_EQ(convscope::map_npy(dir / "empty.npy").sizes(), (std::vector<int64_t>{0, 4}));
}

TEST(NpyStream, UnfinishedOrShortWritesLeaveNoFile) {
    TempDir dir;
    const std::string path = dir / "rows.npy";
    {
        convscope::NpyRowWriter w(path, 4, 2);
        w.write(torch::ones({2, 2}));
        EXPECT_THROW(w.finish(), Error);  // 2 of 4 rows
    }
    {
        convscope::NpyRowWriter w(path, 4, 2);
        w.write(torch::ones({3, 2}));
        EXPECT_THROW(w.write(torch::ones({2, 2})), Error);  // more than announced
        EXPECT_THROW(w.write(torch::ones({1, 3})), Error);  // another width
    }  // dropped unfinished
    EXPECT_FALSE(fs::exists(path));
    EXPECT_TRUE(fs::is_empty(dir.path()));  // no temporary file left
}

// A mapped file whose body is shorter than its header says is refused before any read.
TEST(NpyStream, TruncatedOrOtherArraysAreRefusedWithTheReason) {
    TempDir dir;
    const std::string full = convscope::npy_bytes(torch::ones({100, 8}));
    {
        std::ofstream f(dir / "cut.npy", std::ios::binary);
        f.write(full.data(), std::streamsize(full.size() - 40));
    }
    try {
        convscope::map_npy(dir / "cut.npy");
        ADD_FAILURE() << "a truncated file was mapped";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
    }
    convscope::write_npy(dir / "f8.npy", torch::ones({3, 2}, torch::kDouble));
    EXPECT_THROW(convscope::map_npy(dir / "f8.npy"), Error);
    convscope::write_npy(dir / "3d.npy", torch::ones({3, 2, 2}));
    EXPECT_THROW(convscope::map_npy(dir / "3d.npy"), Error);
    EXPECT_THROW(convscope::map_npy(dir / "missing.npy"), Error);
}
