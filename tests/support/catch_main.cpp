#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>

#include <unistd.h>

#if defined(__SANITIZE_THREAD__)
// Memory that a peer writes through UCX is ordered by the transfer protocol
// across processes, which ThreadSanitizer cannot see, and UCX itself is not
// instrumented; its library finalizers also unlock mutexes TSan never saw
// locked. Reports from inside UCX are therefore not ferry's.
extern "C" const char* __tsan_default_suppressions() {
    return "called_from_lib:libucp.so.0\n"
           "called_from_lib:libuct.so.0\n"
           "called_from_lib:libucs.so.0\n"
           "called_from_lib:libucm.so.0\n"
           "mutex:ucm_library_init\n"
           "mutex:_dl_call_fini\n";
}
#endif

int main(int argc, char** argv) {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    // UCX's memory hooks patch malloc and mmap, which the sanitizers
    // intercept too; the two together crash. UCX reads these settings when
    // its libraries load, before main, so they must be in the environment
    // the program starts with: set them and start again, unless the user
    // has chosen.
    if (std::getenv("UCX_MEM_MALLOC_HOOKS") == nullptr) {
        setenv("UCX_MEM_MALLOC_HOOKS", "no", 0);
        setenv("UCX_MEM_MMAP_HOOK_MODE", "none", 0);
        setenv("UCX_MEM_EVENTS", "no", 0);
        ::execv("/proc/self/exe", argv);
        std::perror("restarting without UCX's memory hooks: execv /proc/self/exe");
    }
#endif
    return Catch::Session().run(argc, argv);
}
