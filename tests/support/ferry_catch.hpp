#pragma once

// Catch2 glue for ferry's vocabulary: readable statuses in failure messages
// and a check for "this call throws ferry::error with this status and message".

#include <catch2/catch.hpp>
#include <ferry/ferry.hpp>

#include <cstdio>
#include <optional>
#include <string>
#include <utility>

namespace Catch {
template <>
struct StringMaker<ferry::status> {
    static std::string convert(ferry::status s) { return std::string(ferry::to_string(s)); }
};
template <>
struct StringMaker<ferry::cost_method> {
    static std::string convert(ferry::cost_method m) { return std::string(ferry::to_string(m)); }
};
template <>
struct StringMaker<ferry::xfer_path> {
    static std::string convert(ferry::xfer_path p) { return std::string(ferry::to_string(p)); }
};
}  // namespace Catch

namespace ferry_test {

/// The ferry::error that f throws, or nothing if it returns. Other exceptions propagate.
template <class F>
std::optional<ferry::error> error_from(F&& f) {
    try {
        std::forward<F>(f)();
    } catch (const ferry::error& e) {
        return e;
    }
    return std::nullopt;
}

}  // namespace ferry_test

/// Requires `expr` to throw ferry::error whose status is `want_status` and
/// whose what() matches `what_matcher` (a Catch2 string matcher).
#define REQUIRE_FERRY_ERROR(expr, want_status, what_matcher)                                 \
    do {                                                                                     \
        auto ferry_test_error_ = ::ferry_test::error_from([&] { static_cast<void>(expr); }); \
        INFO("expression: " #expr);                                                          \
        REQUIRE(ferry_test_error_.has_value());                                              \
        CHECK(ferry_test_error_->code_status() == (want_status));                            \
        CHECK_THAT(std::string(ferry_test_error_->what()), what_matcher);                    \
    } while (false)

namespace ferry_test {

/// True in a build instrumented by AddressSanitizer or ThreadSanitizer.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool sanitized = true;
#elif defined(__has_feature)
inline constexpr bool sanitized = __has_feature(address_sanitizer) || __has_feature(thread_sanitizer);
#else
inline constexpr bool sanitized = false;
#endif

/// What ferry::error's what() says for `message` and status `s`:
/// std::system_error appends ": " and the code's message.
inline std::string error_text(const std::string& message, ferry::status s) {
    return message + ": " + std::string(ferry::to_string(s));
}

/// Marks the running test case skipped: ctest reports it so, with `why`.
/// Call it, then return from the test case.
inline void skip(const std::string& why) {
    std::printf("FERRY-SKIP: %s\n", why.c_str());
    std::fflush(stdout);
}

}  // namespace ferry_test
