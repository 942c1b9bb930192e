# Runs one libFuzzer target for a while, from the seed corpus, as a ctest test
# (FERRY_FUZZ_SECONDS). Every seed is replayed first, so a seed that once
# crashed a fuzzer is a regression test.
#   -DFUZZER=ferry-fuzz-X -DSECONDS=N -DSEEDS=<source dir, read only>
#   -DCORPUS=<build dir, where new inputs go> -DARTIFACTS=<build dir for crash reproducers>
foreach(var IN ITEMS FUZZER SECONDS SEEDS CORPUS ARTIFACTS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_fuzzer.cmake: -D${var}= is missing")
  endif()
endforeach()
file(MAKE_DIRECTORY ${CORPUS} ${ARTIFACTS})

# The first directory receives what the fuzzer finds; the seeds stay as they are.
set(command ${FUZZER} -max_total_time=${SECONDS} -timeout=25 -print_final_stats=1
  -artifact_prefix=${ARTIFACTS}/ ${CORPUS} ${SEEDS})
list(JOIN command " " shown)
message(STATUS "${shown}")
execute_process(COMMAND ${command} RESULT_VARIABLE rc)
file(GLOB corpus ${CORPUS}/*)
list(LENGTH corpus corpus_size)
message(STATUS "corpus: ${corpus_size} inputs in ${CORPUS}")
if(NOT rc EQUAL 0)
  file(GLOB artifacts ${ARTIFACTS}/*)
  set(replay "")
  foreach(artifact IN LISTS artifacts)
    string(APPEND replay "\n  ${FUZZER} ${artifact}")
  endforeach()
  message(FATAL_ERROR "${FUZZER} failed (${rc}). Replay what it wrote with:${replay}\n"
    "Minimise with: ${FUZZER} -minimize_crash=1 -runs=100000 -artifact_prefix=${ARTIFACTS}/min- <reproducer>\n"
    "Keep the minimised input as a regression seed in ${SEEDS}/.")
endif()
