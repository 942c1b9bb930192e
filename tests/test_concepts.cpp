// The compile-time contract (concepts, policy, vocabulary types) and the
// status / error vocabulary that every call reports through.

#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>

#include "support/ferry_catch.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

namespace {

using host_backend = ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::host>>;
using threaded_backend = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>;

// ferry::xfer_backend<host_backend> is checked at run time, in the test
// case after these declarations, so that a violation fails one test rather
// than every build of the tests directory.
static_assert(ferry::notif_channel<host_backend>);
static_assert(std::is_same_v<ferry::ucx_backend<>, host_backend>);
static_assert(std::is_same_v<host_backend::policy_type, ferry::default_policy>);
static_assert(std::is_same_v<host_backend::region_type, ferry::region>);

// UCX callbacks hold the backend's address, so it must not be copied or moved.
static_assert(!std::is_copy_constructible_v<host_backend>);
static_assert(!std::is_move_constructible_v<host_backend>);
static_assert(!std::is_copy_assignable_v<host_backend>);
static_assert(!std::is_move_assignable_v<host_backend>);
// A region owns a registration: movable, not copyable.
static_assert(std::is_nothrow_move_constructible_v<ferry::region>);
static_assert(std::is_nothrow_move_assignable_v<ferry::region>);
static_assert(!std::is_copy_constructible_v<ferry::region>);

// Handles are small values.
static_assert(std::is_trivially_copyable_v<ferry::peer>);
static_assert(std::is_trivially_copyable_v<ferry::xfer>);
static_assert(std::is_trivially_copyable_v<ferry::desc>);
static_assert(!ferry::peer{}.valid());
static_assert(!ferry::xfer{}.valid());

static_assert(ferry::is_policy<ferry::default_policy>::value);
static_assert(!ferry::is_policy<int>::value);
static_assert(ferry::is_progress_mode<ferry::progress::inline_poll>::value);
static_assert(ferry::is_progress_mode<ferry::progress::thread>::value);
static_assert(!ferry::is_progress_mode<ferry::memory::host>::value);
static_assert(!ferry::is_memory_kind<ferry::progress::inline_poll>::value);

// The smallest type that models both concepts: declarations are enough.
struct mock_backend {
    using region_type = int;
    region_type register_memory(void*, std::size_t, std::uint32_t);
    region_type allocate(std::size_t);
    [[nodiscard]] std::vector<std::byte> local_metadata() const;
    ferry::peer load_remote(std::span<const std::byte>);
    void unload_remote(ferry::peer);
    ferry::xfer prepare(ferry::xfer_op, std::span<const ferry::desc>, std::span<const ferry::desc>, ferry::peer);
    ferry::status post(ferry::xfer, std::string_view = {}) noexcept;
    ferry::status check(ferry::xfer) noexcept;
    ferry::status release(ferry::xfer) noexcept;
    [[nodiscard]] ferry::xfer_cost estimate(ferry::xfer) const;
    unsigned progress();
    ferry::status send_notif(ferry::peer, std::string_view) noexcept;
    ferry::notif_map take_notifs();
    template <class F>
    std::size_t poll_notifs(F&&);
};
static_assert(ferry::xfer_backend<mock_backend>);
static_assert(ferry::notif_channel<mock_backend>);

// Each of these breaks one requirement, which the concepts must notice.
struct post_may_throw : mock_backend {
    ferry::status post(ferry::xfer, std::string_view = {});
};
struct check_may_throw : mock_backend {
    ferry::status check(ferry::xfer);
};
struct post_without_notif : mock_backend {
    ferry::status post(ferry::xfer) noexcept;
};
struct allocate_returns_other : mock_backend {
    long allocate(std::size_t);
};
struct metadata_not_const : mock_backend {
    std::vector<std::byte> local_metadata();
};
struct estimate_returns_other : mock_backend {
    [[nodiscard]] std::size_t estimate(ferry::xfer) const;
};
struct send_notif_may_throw : mock_backend {
    ferry::status send_notif(ferry::peer, std::string_view);
};
struct take_notifs_returns_other : mock_backend {
    std::vector<std::string> take_notifs();
};
static_assert(!ferry::xfer_backend<post_may_throw>);
static_assert(!ferry::xfer_backend<check_may_throw>);
static_assert(!ferry::xfer_backend<post_without_notif>);
static_assert(!ferry::xfer_backend<allocate_returns_other>);
static_assert(!ferry::xfer_backend<metadata_not_const>);
static_assert(!ferry::xfer_backend<estimate_returns_other>);
static_assert(ferry::xfer_backend<send_notif_may_throw>);
static_assert(!ferry::notif_channel<send_notif_may_throw>);
static_assert(!ferry::notif_channel<take_notifs_returns_other>);
static_assert(!ferry::xfer_backend<int>);
static_assert(!ferry::notif_channel<int>);

}  // namespace

static_assert(ferry::xfer_backend<host_backend>);
static_assert(ferry::notif_channel<host_backend>);
static_assert(ferry::xfer_backend<threaded_backend>);
static_assert(ferry::notif_channel<threaded_backend>);

TEST_CASE("ucx_backend models xfer_backend and notif_channel under every policy") {
    // The static_asserts above are the test; this case keeps it visible in ctest.
    CHECK(ferry::xfer_backend<host_backend>);
    CHECK(ferry::notif_channel<threaded_backend>);
}

TEST_CASE("every status has its name, and only negative ones are errors") {
    struct row {
        ferry::status s;
        std::string_view name;
        bool error;
    };
    const row rows[] = {
        {ferry::status::ok, "ok", false},
        {ferry::status::in_progress, "in_progress", false},
        {ferry::status::invalid_argument, "invalid_argument", true},
        {ferry::status::not_registered, "not_registered", true},
        {ferry::status::no_such_peer, "no_such_peer", true},
        {ferry::status::busy, "busy", true},
        {ferry::status::canceled, "canceled", true},
        {ferry::status::peer_failed, "peer_failed", true},
        {ferry::status::ucx_error, "ucx_error", true},
        {ferry::status::timed_out, "timed_out", true},
        {ferry::status::no_memory, "no_memory", true},
        {ferry::status::device_error, "device_error", true},
    };
    for (const auto& r : rows) {
        INFO("status " << static_cast<int>(r.s));
        CHECK(ferry::to_string(r.s) == r.name);
        CHECK(ferry::is_error(r.s) == r.error);
        CHECK((r.s < ferry::status::ok) == r.error);
    }
    CHECK(ferry::to_string(static_cast<ferry::status>(42)) == "unknown");
    CHECK(ferry::to_string(static_cast<ferry::status>(-100)) == "unknown");
}

TEST_CASE("ferry statuses are std::error_codes of the 'ferry' category") {
    const std::error_category& cat = ferry::status_category();
    CHECK(std::string_view(cat.name()) == "ferry");
    CHECK(&cat == &ferry::status_category());
    CHECK(cat.message(static_cast<int>(ferry::status::no_such_peer)) == "no_such_peer");
    CHECK(cat.message(12345) == "unknown");

    std::error_code ec = ferry::status::busy;
    CHECK(ec.value() == static_cast<int>(ferry::status::busy));
    CHECK(&ec.category() == &cat);
    CHECK(ec.message() == "busy");
    CHECK(ec == ferry::status::busy);
    CHECK(ec != ferry::status::canceled);
    CHECK(ferry::make_error_code(ferry::status::ok).value() == 0);
    CHECK_FALSE(static_cast<bool>(ferry::make_error_code(ferry::status::ok)));
}

TEST_CASE("ferry::error carries the status, the UCX status and the message") {
    const ferry::error e(ferry::status::not_registered, "prepare: descriptor 3: something", -4);
    CHECK(e.code_status() == ferry::status::not_registered);
    CHECK(e.code() == ferry::status::not_registered);
    CHECK(e.ucx_status() == -4);
    CHECK_THAT(e.what(), Catch::Matchers::StartsWith("prepare: descriptor 3: something"));

    const ferry::error plain(ferry::status::invalid_argument, "x");
    CHECK(plain.ucx_status() == 0);

    // Callers who know only the standard library can still catch it.
    CHECK_THROWS_AS(throw ferry::error(ferry::status::busy, "b"), std::system_error);
    try {
        throw ferry::error(ferry::status::timed_out, "t");
    } catch (const std::system_error& caught) {
        CHECK(caught.code() == ferry::status::timed_out);
        CHECK(&caught.code().category() == &ferry::status_category());
    }
}

TEST_CASE("vocabulary types print and compare") {
    CHECK(ferry::to_string(ferry::xfer_op::read) == "read");
    CHECK(ferry::to_string(ferry::xfer_op::write) == "write");
    CHECK(ferry::to_string(ferry::cost_method::ucx_evaluate_perf) == "ucx_evaluate_perf");
    CHECK(ferry::to_string(ferry::cost_method::cuda_ipc_model) == "cuda_ipc_model");
    CHECK(ferry::to_string(ferry::cost_method::host_ipc_model) == "host_ipc_model");
    CHECK(ferry::to_string(ferry::cost_method::unknown) == "unknown");
    CHECK(ferry::to_string(ferry::xfer_path::automatic) == "automatic");
    CHECK(ferry::to_string(ferry::xfer_path::ucx) == "ucx");
    CHECK(ferry::to_string(ferry::xfer_path::cuda_ipc) == "cuda_ipc");
    CHECK(ferry::to_string(ferry::xfer_path::host_ipc) == "host_ipc");
    CHECK(ferry::to_string(static_cast<ferry::xfer_path>(200)) == "unknown");

    const ferry::xfer_cost none;
    CHECK(none.duration.count() == 0);
    CHECK(none.margin.count() == 0);
    CHECK(none.method == ferry::cost_method::unknown);

    const ferry::desc a{0x1000, 16, 0};
    CHECK(a == ferry::desc{0x1000, 16, 0});
    CHECK(a != ferry::desc{0x1000, 16, 1});
    CHECK(a != ferry::desc{0x1001, 16, 0});
    CHECK(a != ferry::desc{0x1000, 17, 0});

    CHECK(ferry::peer{} == ferry::peer{});
    CHECK(ferry::peer{{0, 0}}.valid());
    CHECK(ferry::peer{{0, 0}} != ferry::peer{{0, 1}});
    CHECK(ferry::xfer{{3, 1}} == ferry::xfer{{3, 1}});

    CHECK(ferry::version.major == FERRY_VERSION_MAJOR);
    CHECK(ferry::version.minor == FERRY_VERSION_MINOR);
    CHECK(ferry::version.patch == FERRY_VERSION_PATCH);
}
