# Runs one tiny ferry-bench sweep and checks its JSON (and CSV) output.
# -DBENCH=ferry-bench -DPYTHON=python3 -DCHECK=check_json.py -DJSON=out.json
# -DARGS=<bench arguments> -DEXPECT=<check_json.py arguments>
file(REMOVE ${JSON})
execute_process(COMMAND ${BENCH} ${ARGS} --json ${JSON} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "ferry-bench ${ARGS} failed: ${rc}")
endif()
execute_process(COMMAND ${PYTHON} ${CHECK} ${JSON} ${EXPECT} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${JSON} is not what ferry-bench should write")
endif()
