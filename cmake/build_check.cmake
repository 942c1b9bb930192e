# The build.* tests (FERRY_TEST_BUILDS, ferry_test_builds.cmake): configure
# and build a sub-build of ferry with another build type or compiler and
# warnings as errors. Nothing is run: the parent build and the sanitize.*
# sub-builds run the tests, and what differs here is what the compiler sees
# (the optimisation level, NDEBUG, another compiler's warnings); running the
# suite again would double CI's time to check the same behaviour.
#   -DSOURCE_DIR= -DBINARY_DIR= -DGENERATOR= -DCXX= -DBUILD_TYPE= -DCUDA= -DJOBS=
foreach(var IN ITEMS SOURCE_DIR BINARY_DIR GENERATOR CXX BUILD_TYPE CUDA JOBS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "build_check.cmake: -D${var}= is missing")
  endif()
endforeach()

# What a user may build with ferry: the tests, the examples and the
# benchmark. Not the header check: whether a header includes what it uses
# does not change with the build type or between GCC and clang, and the
# parent build checks it. Not the Python module: one pybind11 unit, the
# longest compile of a sub-build, which the parent build compiles with
# warnings as errors and python.pip_install compiles again. The sub-build
# registers no sub-builds of its own.
execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BINARY_DIR} -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CXX}
    -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
    -DFERRY_WERROR=ON
    -DFERRY_CUDA=${CUDA}
    -DFERRY_BUILD_TESTS=ON
    -DFERRY_BUILD_EXAMPLES=ON
    -DFERRY_BUILD_BENCHMARKS=ON
    -DFERRY_BUILD_PYTHON=OFF
    -DFERRY_HEADER_CHECK=OFF
    -DFERRY_TEST_BUILDS=
    -DFERRY_TEST_SANITIZERS=
    -DFERRY_FUZZ_SECONDS=0
  COMMAND_ECHO STDOUT
  COMMAND_ERROR_IS_FATAL ANY)
execute_process(
  COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} -j ${JOBS}
  COMMAND_ECHO STDOUT
  COMMAND_ERROR_IS_FATAL ANY)
