#include "convscope/runtime/strings.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <exception>

namespace convscope::detail {

bool parse_int64(const std::string& s, int64_t& out) {
    if (s.empty()) return false;
    const char* begin = s.data();
    if (*begin == '+') ++begin;
    int64_t v = 0;
    auto [ptr, err] = std::from_chars(begin, s.data() + s.size(), v);
    if (err != std::errc() || ptr != s.data() + s.size() || ptr == begin) return false;
    out = v;
    return true;
}

size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
        }
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

std::string closest_names_hint(const std::string& name, const std::vector<std::string>& names) {
    std::vector<std::pair<size_t, std::string>> scored;
    for (const auto& n : names) {
        size_t d = edit_distance(name, n);
        // A name that contains the query (or the reverse) is a good guess whatever its length.
        if (!name.empty() && (n.find(name) != std::string::npos || name.find(n) != std::string::npos))
            d = std::min<size_t>(d, 1);
        scored.emplace_back(d, n);
    }
    std::stable_sort(scored.begin(), scored.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string out;
    const size_t limit = std::max<size_t>(3, name.size() / 2);
    std::vector<std::string> picked;
    for (const auto& s : scored) {
        if (picked.size() == 3) break;
        if (s.first <= limit) picked.push_back(s.second);
    }
    if (picked.empty()) {
        if (names.empty()) return "";
        // Nothing is close: list a few names so the user sees what exists.
        for (size_t i = 0; i < names.size() && i < 6; ++i) picked.push_back(names[i]);
        out = "; layers are ";
        for (size_t i = 0; i < picked.size(); ++i) out += (i ? ", '" : "'") + picked[i] + "'";
        if (names.size() > picked.size()) out += ", ...";
        return out;
    }
    out = ": did you mean ";
    for (size_t i = 0; i < picked.size(); ++i) {
        if (i) out += (i + 1 == picked.size()) ? " or " : ", ";
        out += "'" + picked[i] + "'";
    }
    return out + "?";
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::string cur;
    for (char c : s) {
        if (c == sep) {
            out.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    out.push_back(cur);
    return out;
}

std::string trim(const std::string& s) {
    const size_t a = s.find_first_not_of(" \t\r\n");
    if (a == std::string::npos) return "";
    const size_t b = s.find_last_not_of(" \t\r\n");
    return s.substr(a, b - a + 1);
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
    std::string out;
    for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
    return out;
}

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

bool parse_double(const std::string& s, double& out) {
    if (s.empty()) return false;
    try {
        size_t used = 0;
        const double v = std::stod(s, &used);
        if (used != s.size() || !std::isfinite(v)) return false;
        out = v;
        return true;
    } catch (const std::exception&) {
        return false;
    }
}

std::string format_number(double v, int digits) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
    return buf;
}

std::string file_safe(const std::string& name) {
    std::string s = name;
    for (auto& c : s)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) c = '_';
    return s;
}

std::string dims_str(const std::vector<int64_t>& shape) {
    std::string s;
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
    return s;
}

std::string shape_str(const std::vector<int64_t>& shape) { return "[" + dims_str(shape) + "]"; }

}  // namespace convscope::detail
