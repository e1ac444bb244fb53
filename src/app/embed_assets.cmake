# Turns every file of the web asset folder into a byte array of a generated C++ source, so the
# explorer and the report carry their HTML/JS/CSS inside the binary (nothing is read or fetched
# at run time). Usage: cmake -DWEB_DIR=<folder> -DOUT=<file.cpp> -P embed_assets.cmake
file(GLOB files RELATIVE "${WEB_DIR}" "${WEB_DIR}/*")
list(SORT files)
set(arrays "")
set(table "")
set(i 0)
foreach(name ${files})
  if(IS_DIRECTORY "${WEB_DIR}/${name}")
    continue()
  endif()
  file(READ "${WEB_DIR}/${name}" hex HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  # 24 bytes per line keeps the generated file readable for compilers and people.
  string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){24})" "\\1\n    " bytes "${bytes}")
  # A trailing 0 makes text assets usable as C strings and empty files valid arrays.
  string(APPEND arrays "const unsigned char asset_${i}[] = {\n    ${bytes}0};\n")
  string(APPEND table "        {\"${name}\", asset_${i}, sizeof(asset_${i}) - 1},\n")
  math(EXPR i "${i} + 1")
endforeach()
set(content "// Generated from the web asset folder by embed_assets.cmake; do not edit.
#include \"convscope/app/web_assets.hpp\"

namespace convscope::detail {
namespace {
${arrays}}  // namespace

const std::vector<WebAsset>& web_assets() {
    static const std::vector<WebAsset> table = {
${table}    };
    return table;
}

}  // namespace convscope::detail
")
# Rewrite only on change, so an unchanged asset set does not trigger recompilation.
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
  if(old STREQUAL content)
    return()
  endif()
endif()
file(WRITE "${OUT}" "${content}")
