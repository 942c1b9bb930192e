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

# Everything a user may build: the tests, the header check, the examples and
# the benchmark. The sub-build registers no sub-builds of its own.
execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BINARY_DIR} -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CXX}
    -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
    -DFERRY_WERROR=ON
    -DFERRY_CUDA=${CUDA}
    -DFERRY_BUILD_TESTS=ON
    -DFERRY_BUILD_EXAMPLES=ON
    -DFERRY_BUILD_BENCHMARKS=ON
    -DFERRY_TEST_BUILDS=
    -DFERRY_TEST_SANITIZERS=
    -DFERRY_FUZZ_SECONDS=0
  COMMAND_ECHO STDOUT
  COMMAND_ERROR_IS_FATAL ANY)
execute_process(
  COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} -j ${JOBS}
  COMMAND_ECHO STDOUT
  COMMAND_ERROR_IS_FATAL ANY)
