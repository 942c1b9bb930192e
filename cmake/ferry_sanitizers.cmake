# FERRY_SANITIZE=address,undefined or FERRY_SANITIZE=thread instruments ferry's
# own targets (tests, examples, benchmark) and everything they link.
set(FERRY_SANITIZE "" CACHE STRING "Sanitizers for ferry's own targets: address,undefined | thread | empty")

if(FERRY_SANITIZE)
  if(FERRY_SANITIZE MATCHES "thread" AND FERRY_SANITIZE MATCHES "address")
    message(FATAL_ERROR "FERRY_SANITIZE: thread cannot be combined with address")
  endif()
  # Line tables for the reports, where the build type gives no debug info
  # (where it does, a -g1 here would cut it down).
  target_compile_options(ferry_build_options INTERFACE -fsanitize=${FERRY_SANITIZE} -fno-omit-frame-pointer
    $<$<NOT:$<CONFIG:Debug,RelWithDebInfo>>:-g1>
    # GCC 12's instrumentation makes -Wmaybe-uninitialized fire inside libstdc++.
    $<$<CXX_COMPILER_ID:GNU>:-Wno-maybe-uninitialized>)
  target_link_options(ferry_build_options INTERFACE -fsanitize=${FERRY_SANITIZE})
endif()
