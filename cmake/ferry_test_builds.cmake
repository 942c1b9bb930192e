# FERRY_TEST_BUILDS: a list of build types, each optionally after a compiler,
# e.g. "Debug;clang++:Debug". Per entry, build.<entry>
# (build.release, build.clang.debug) configures a sub-build of this source
# tree in tests/builds/<entry> with FERRY_WERROR=ON and builds everything in
# it, so that one ctest run proves that each configuration compiles without
# warnings; build_check.cmake says why it runs nothing. Included from
# tests/CMakeLists.txt, so that the tests are registered with the others.
foreach(entry IN LISTS FERRY_TEST_BUILDS)
  string(TOLOWER "${entry}" lower)
  # A misspelt build type would configure without complaint and build
  # without any of the flags it was meant to check.
  if(NOT lower MATCHES "^(([^:]+):)?(debug|release|relwithdebinfo|minsizerel)$")
    message(FATAL_ERROR "FERRY_TEST_BUILDS: '${entry}' is not a build type (Debug, Release, RelWithDebInfo, "
      "MinSizeRel), or a compiler and a build type joined by ':' (entries are separated by ';', "
      "e.g. \"Release;Debug;clang++:Debug\")")
  endif()
  string(REGEX MATCH "^(([^:]+):)?([^:]+)$" unused "${entry}")
  set(compiler "${CMAKE_MATCH_2}")
  set(build_type "${CMAKE_MATCH_3}")
  string(TOLOWER "${build_type}" id)
  set(cxx ${CMAKE_CXX_COMPILER})
  if(compiler)
    # Looked up now, so that a missing compiler fails the configure with a
    # hint rather than a test halfway through the run.
    string(MAKE_C_IDENTIFIER "${compiler}" compiler_var)
    find_program(FERRY_TEST_BUILDS_CXX_${compiler_var} NAMES ${compiler} DOC "${compiler} for the build.* tests")
    if(NOT FERRY_TEST_BUILDS_CXX_${compiler_var})
      message(FATAL_ERROR "FERRY_TEST_BUILDS: '${entry}': ${compiler} was not found "
        "(Debian 12: apt-get install -y clang, for clang++)")
    endif()
    set(cxx ${FERRY_TEST_BUILDS_CXX_${compiler_var}})
    string(REPLACE "++" "" compiler_name "${compiler}")
    string(MAKE_C_IDENTIFIER "${compiler_name}" compiler_name)
    set(id ${compiler_name}.${id})
  endif()
  string(TOLOWER "${CMAKE_BUILD_TYPE}" own_build_type)
  if(cxx STREQUAL CMAKE_CXX_COMPILER AND id STREQUAL own_build_type)
    message(FATAL_ERROR "FERRY_TEST_BUILDS: '${entry}' is this build's own build type and compiler; "
      "build.${id} would build the same again (list the other configurations only)")
  endif()
  if(TEST build.${id})
    message(FATAL_ERROR "FERRY_TEST_BUILDS: '${entry}' is listed twice")
  endif()
  add_test(NAME build.${id}
    COMMAND ${CMAKE_COMMAND}
      -DSOURCE_DIR=${PROJECT_SOURCE_DIR}
      -DBINARY_DIR=${CMAKE_CURRENT_BINARY_DIR}/builds/${id}
      -DGENERATOR=${CMAKE_GENERATOR}
      -DCXX=${cxx}
      -DBUILD_TYPE=${build_type}
      -DCUDA=${FERRY_CUDA}
      -DJOBS=2
      -P ${CMAKE_CURRENT_LIST_DIR}/build_check.cmake)
  # It builds with two jobs of its own, so ctest -j2 runs it alone, as it
  # does sanitize.*.
  set_tests_properties(build.${id} PROPERTIES PROCESSORS 2 TIMEOUT 1500)
endforeach()
