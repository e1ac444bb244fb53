#pragma once
// One table per enum gives both its names and its parser: `parse_enum` reads a name
// (case-insensitive, aliases allowed), `enum_name` prints the first name of a value.
#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope {

template <class E>
struct EnumName {
    E value;
    const char* name;
};

template <class E, size_t N>
using EnumTable = std::array<EnumName<E>, N>;

// The name printed for `value`: its first entry in the table.
template <class E, size_t N>
const char* enum_name(const EnumTable<E, N>& table, E value) {
    for (const auto& e : table)
        if (e.value == value) return e.name;
    CONVSCOPE_CHECK(false, "every enum value has a name");
    return "";
}

// The names that enum_name prints, in table order (aliases left out).
template <class E, size_t N>
std::vector<std::string> enum_names(const EnumTable<E, N>& table) {
    std::vector<std::string> out;
    for (const auto& e : table)
        if (enum_name(table, e.value) == e.name) out.emplace_back(e.name);
    return out;
}

// The value named `name`; otherwise UsageError "unknown WHAT 'NAME': use a, b or c".
template <class E, size_t N>
E parse_enum(const EnumTable<E, N>& table, const std::string& name, const std::string& what) {
    const std::string s = detail::lower(name);
    for (const auto& e : table)
        if (s == e.name) return e.value;
    const std::vector<std::string> names = enum_names(table);
    std::string list;
    for (size_t i = 0; i < names.size(); ++i)
        list += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
    throw UsageError("unknown " + what + " '" + name + "': use " + list);
}

}  // namespace convscope
