# The sanitize.* tests (FERRY_TEST_SANITIZERS): configure, build and test a
# sub-build of ferry with FERRY_SANITIZE=<SANITIZE>.
#   -DSOURCE_DIR= -DBINARY_DIR= -DGENERATOR= -DCXX= -DBUILD_TYPE= -DSANITIZE= -DWERROR= -DJOBS=
foreach(var IN ITEMS SOURCE_DIR BINARY_DIR GENERATOR CXX BUILD_TYPE SANITIZE WERROR JOBS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "sanitize_suite.cmake: -D${var}= is missing")
  endif()
endforeach()
string(TOUPPER "${BUILD_TYPE}" BUILD_TYPE_UPPER)

# -O0 -g1: compile time is most of this test, and GCC compiles the
# instrumented tests in less than half the time it takes at -O1 -g, while the
# tests, which mostly wait on UCX (not instrumented, optimised), run about a
# fifth longer. Line tables are all the reports need. Asserts stay on (no
# NDEBUG).
# The examples are not built (consume.* build their own; test_etcd's
# ferry-demo case skips without it): the plain build's demo.* tests and that
# case cover the demo's command line and how its two processes meet, and the
# transfers and directory calls under it are the test programs' own.
# Nor is memory::cuda: its tests need a GPU, and without one they only skip.
# Neither is the benchmark: instrumented, its six units cost about a sixth
# of this sub-build's compile time, and its smoke tests drive the same
# transfer and notification paths that the test programs check.
# The sub-build registers no sub-builds of its own.
execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BINARY_DIR} -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CXX}
    -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
    "-DCMAKE_CXX_FLAGS_${BUILD_TYPE_UPPER}=-O0 -g1"
    -DFERRY_SANITIZE=${SANITIZE}
    -DFERRY_WERROR=${WERROR}
    -DFERRY_BUILD_EXAMPLES=OFF
    -DFERRY_BUILD_BENCHMARKS=OFF
    -DFERRY_BUILD_PYTHON=OFF
    -DFERRY_HEADER_CHECK=OFF
    -DFERRY_CUDA=OFF
    -DFERRY_TEST_SANITIZERS=
    -DFERRY_TEST_BUILDS=
    -DFERRY_FUZZ_SECONDS=0
  COMMAND_ECHO STDOUT
  COMMAND_ERROR_IS_FATAL ANY)
execute_process(
  COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} -j ${JOBS}
  COMMAND_ECHO STDOUT
  COMMAND_ERROR_IS_FATAL ANY)
# consume.* build the demo as a user would, without ferry's flags: nothing
# there is instrumented, and the plain build runs them already. Nor
# soak.netns: over its flapping link UCX 1.13 itself crashes agents (a
# SIGSEGV in its tcp progress among them), which the plain build's soak tells
# from ferry's by UCX's own report, but which ASan reports as its own error,
# so that here it cannot be told apart; soak.shm and soak.tcp run here.
execute_process(
  COMMAND ${CMAKE_CTEST_COMMAND} --test-dir ${BINARY_DIR} --output-on-failure -j ${JOBS}
    --exclude-regex "^(consume\\.|soak\\.netns$)"
  COMMAND_ECHO STDOUT
  COMMAND_ERROR_IS_FATAL ANY)
