#pragma once
// Small string helpers shared by the library.
#include <cstdint>
#include <string>
#include <vector>

namespace convscope::detail {

// Levenshtein edit distance.
size_t edit_distance(const std::string& a, const std::string& b);
// ": did you mean 'a', 'b' or 'c'?" with the closest names to `name` (by edit distance and
// substring), or "" when nothing is close.
std::string closest_names_hint(const std::string& name, const std::vector<std::string>& names);
// Parses the whole of `s` as a base-10 int64 (an optional sign, then digits; no spaces, no
// trailing characters); false for anything else, including overflow.
bool parse_int64(const std::string& s, int64_t& out);
// `s` without leading and trailing spaces, tabs, carriage returns and newlines.
std::string trim(const std::string& s);
// Splits on a single character.
std::vector<std::string> split(const std::string& s, char sep);
// The strings with `sep` between them.
std::string join(const std::vector<std::string>& parts, const std::string& sep);
// ASCII lower case.
std::string lower(std::string s);
// Parses the whole of `s` as a finite number; false for anything else.
bool parse_double(const std::string& s, double& out);
// A number as people read it: `digits` significant digits, no trailing zeros ("%g").
std::string format_number(double v, int digits = 6);
// `name` with every character other than letters, digits, '.', '_' and '-' replaced by '_': a
// file name for a layer ("layer1.0/conv" -> "layer1.0_conv").
std::string file_safe(const std::string& name);
// "1,28,28" (as --input-shape takes it).
std::string dims_str(const std::vector<int64_t>& shape);
// "[1,28,28]".
std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace convscope::detail
